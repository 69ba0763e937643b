//! The manual pages (debian/man) hold what `--help` says: the blocks between
//! `.\" BEGIN GENERATED ...` and `.\" END GENERATED` are rendered from the command line's
//! own definitions, and this test fails when they differ. `DRIFTLOCK_BLESS=1 cargo test
//! --test manpages` writes them again. The rest of each page is written by hand and must
//! have the sections an operator looks for; groff must read every page without a warning.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use clap::CommandFactory;
use std::path::{Path, PathBuf};

fn man_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("debian/man")
}

/// Text for roff: backslashes and dashes escaped, no line starting with a control
/// character.
fn roff_text(s: &str) -> String {
    s.lines()
        .map(|l| {
            let l = l.replace('\\', "\\e").replace('-', "\\-");
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// clap_mangen's options list of `cmd`, without its section header and string setup,
/// nor the global options and `--help` every command has (listed once, under OPTIONS).
fn options_of(cmd: &clap::Command) -> String {
    let mut cmd = cmd.clone();
    for id in ["log_level", "help", "version"] {
        if cmd.get_arguments().any(|a| a.get_id() == id) {
            cmd = cmd.mut_arg(id, |a| a.hide(true));
        }
    }
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .render_options_section(&mut out)
        .expect("render options");
    let text = String::from_utf8(out).expect("roff is UTF-8");
    text.lines()
        .skip_while(|l| !l.starts_with(".SH OPTIONS"))
        .skip(1)
        .collect::<Vec<_>>()
        .join("\n")
}

/// One command's block: its usage as a subsection title, what it does, its options.
fn command_block(cmd: &clap::Command, out: &mut String) {
    let usage = cmd
        .clone()
        .render_usage()
        .to_string()
        .trim_start_matches("Usage: ")
        .to_string();
    out.push_str(&format!(".SS \"{}\"\n", roff_text(&usage)));
    if let Some(about) = cmd.get_long_about().or(cmd.get_about()) {
        out.push_str(&roff_text(&about.to_string()));
        out.push('\n');
    }
    if cmd.has_subcommands() {
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            command_block(sub, out);
        }
    } else {
        let options = options_of(cmd);
        if !options.trim().is_empty() {
            out.push_str(&options);
            out.push('\n');
        }
    }
}

/// What a `BEGIN GENERATED <what>` block holds, after the string clap_mangen's text uses
/// for an apostrophe.
fn generated(what: &str) -> String {
    ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n".to_string() + &generated_text(what)
}

fn generated_text(what: &str) -> String {
    let mut cli = driftlock::cli::Cli::command();
    cli.build();
    match what {
        "GLOBAL OPTIONS" => {
            let globals = cli.clone().subcommands(Vec::<clap::Command>::new());
            let mut out = Vec::new();
            clap_mangen::Man::new(globals)
                .render_options_section(&mut out)
                .expect("render options");
            String::from_utf8(out)
                .expect("roff is UTF-8")
                .lines()
                .skip_while(|l| !l.starts_with(".SH OPTIONS"))
                .skip(1)
                .collect::<Vec<_>>()
                .join("\n")
                + "\n"
        }
        "COMMANDS" => {
            let mut out = String::new();
            for sub in cli
                .get_subcommands()
                .filter(|s| !matches!(s.get_name(), "help" | "daemon"))
            {
                command_block(sub, &mut out);
            }
            out
        }
        "DAEMON OPTIONS" => {
            let daemon = cli.find_subcommand("daemon").expect("daemon").clone();
            options_of(&daemon) + "\n"
        }
        other => panic!("unknown generated block {other}"),
    }
}

/// The page with every generated block rendered again.
fn regenerate(page: &str) -> String {
    let mut out = String::new();
    let mut lines = page.lines();
    while let Some(line) = lines.next() {
        out.push_str(line);
        out.push('\n');
        if let Some(what) = line.strip_prefix(".\\\" BEGIN GENERATED ") {
            let what = what.split(" (").next().unwrap_or(what);
            out.push_str(&generated(what));
            for l in lines.by_ref() {
                if l.starts_with(".\\\" END GENERATED") {
                    out.push_str(l);
                    out.push('\n');
                    break;
                }
            }
        }
    }
    out
}

fn pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(man_dir())
        .expect("debian/man")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "1" || e == "8"))
        .collect();
    pages.sort();
    pages
}

#[test]
fn manual_pages_say_what_help_says() {
    let bless = std::env::var_os("DRIFTLOCK_BLESS").is_some();
    for page in pages() {
        let text = std::fs::read_to_string(&page).expect("page");
        let fresh = regenerate(&text);
        if fresh != text {
            if bless {
                std::fs::write(&page, &fresh).expect("write page");
                eprintln!("wrote {}", page.display());
            } else {
                panic!(
                    "{} differs from --help: run DRIFTLOCK_BLESS=1 cargo test --test manpages",
                    page.display()
                );
            }
        }
    }
}

#[test]
fn manual_pages_have_the_sections_operators_look_for() {
    let names: Vec<String> = pages()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in ["driftlock.1", "driftlock-daemon.8", "driftlock-runtime.8"] {
        assert!(names.iter().any(|n| n == want), "no page {want}: {names:?}");
    }
    for page in pages() {
        let text = std::fs::read_to_string(&page).expect("page");
        for section in [
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "OPTIONS",
            "EXIT STATUS",
            "FILES",
            "SIGNALS",
            "EXAMPLES",
            "SEE ALSO",
        ] {
            assert!(
                text.lines()
                    .any(|l| l == format!(".SH {section}") || l == format!(".SH \"{section}\"")),
                "{}: no {section} section",
                page.display()
            );
        }
    }
    // Every command has its block in driftlock(1), the daemon in driftlock-daemon(8).
    let client = std::fs::read_to_string(man_dir().join("driftlock.1")).expect("page");
    let mut cli = driftlock::cli::Cli::command();
    cli.build();
    for sub in cli.get_subcommands().filter(|s| s.get_name() != "help") {
        let page = if sub.get_name() == "daemon" {
            std::fs::read_to_string(man_dir().join("driftlock-daemon.8")).expect("page")
        } else {
            client.clone()
        };
        assert!(
            page.contains(&format!(".SS \"driftlock {}", roff_text(sub.get_name())))
                || sub.get_name() == "daemon" && page.contains("driftlock daemon"),
            "driftlock {} is on no page",
            sub.get_name()
        );
    }
}

#[test]
fn groff_reads_every_page_without_a_warning() {
    if std::process::Command::new("groff")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipping: groff is not installed (.ci/run installs it)");
        return;
    }
    for page in pages() {
        let out = std::process::Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&page)
            .output()
            .expect("groff");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}: {}",
            page.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
