//! `driftlock-runtime`: a runc wrapper. Adds driftlock's OCI hooks on `create`/`run`, then
//! replaces itself with the real runc, argv untouched. See `driftlock::runtime::wrapper`.

fn main() {
    let err = driftlock::runtime::wrapper::run(std::env::args_os().collect());
    eprintln!("driftlock-runtime: {err}");
    std::process::exit(1);
}
