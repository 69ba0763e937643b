//! The `driftlock` command: parse arguments, set up logging, run one library function.
use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = driftlock::cli::Cli::parse();
    env_logger::Builder::new()
        .parse_filters(&cli.effective_log_level())
        .format_timestamp_micros()
        .init();
    let json = cli.json_output();
    match driftlock::cli::run(cli) {
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            // Library errors carry their cause in their message already.
            eprintln!("driftlock: {err}");
            if json {
                println!("{}", err.to_json());
            }
            std::process::ExitCode::from(err.exit_code())
        }
    }
}
