//! Embeds the shipped rules (`rules/*.yml`) in the binary, so `replay` and `run` use them with no
//! files beside the binary.

use std::fmt::Write;

fn main() {
    println!("cargo:rerun-if-changed=rules");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("rules/ exists")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yml") || n.ends_with(".yaml"))
        .collect();
    names.sort();
    let mut out =
        String::from("/// The shipped rules: file name and text.\npub const BUILTIN: &[(&str, &str)] = &[\n");
    for name in names {
        let path = dir.join(&name);
        writeln!(
            out,
            "    ({name:?}, include_str!({:?})),",
            path.display().to_string()
        )
        .unwrap();
    }
    out.push_str("];\n");
    let dest = std::path::Path::new(&std::env::var("OUT_DIR").unwrap()).join("builtin_rules.rs");
    std::fs::write(dest, out).unwrap();
}
