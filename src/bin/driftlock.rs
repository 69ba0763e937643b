//! The `driftlock` command: parse arguments, set up logging, run one library function.
use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = match driftlock::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // --help and --version are not errors; a usage error under --json is JSON on
            // stdout as well, like every other error of a --json command.
            if err.use_stderr() && std::env::args().skip(1).any(|a| a == "--json") {
                println!("{}", driftlock::cli::usage_error_json(&err));
            }
            err.exit();
        }
    };
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
