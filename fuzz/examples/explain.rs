//! Prints a fuzz input as its target decodes it, then runs the target on it (a panic shows
//! the violated property): `cargo run --example explain -- <target> <file>`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [target, file] = &args[..] else {
        eprintln!("usage: explain <target> <input file>");
        std::process::exit(2);
    };
    let data = std::fs::read(file).unwrap_or_else(|e| panic!("{file}: {e}"));
    println!("{}", wharf_fuzz::describe(target, &data));
    wharf_fuzz::run_target(target, &data);
    println!("{target}: no violation");
}
