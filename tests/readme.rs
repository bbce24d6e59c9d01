//! The README's quick start works as written: its `[dependencies]` block lists every
//! crate that its code (and every other Rust block of the README) uses. (The blocks
//! themselves compile and run as doc tests: `ReadmeDoctests` in lib.rs.)

const README: &str = include_str!("../README.md");

/// The fenced blocks of `text` whose info string is `lang`, in order.
fn blocks<'a>(text: &'a str, lang: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = text;
    let fence = format!("```{lang}\n");
    while let Some(at) = rest.find(&fence) {
        let body = &rest[at + fence.len()..];
        let end = body.find("\n```").map_or(body.len(), |e| e + 1);
        out.push(&body[..end]);
        rest = &body[end..];
    }
    out
}

/// The crate names listed under `[dependencies]` in a TOML block, with `-` as `_`.
fn dependencies(toml: &str) -> Vec<String> {
    let mut in_deps = false;
    let mut names = Vec::new();
    for line in toml.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if !in_deps || line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((name, _)) = line.split_once('=') {
            names.push(name.trim().trim_matches('"').replace('-', "_"));
        }
    }
    names
}

/// The crates a Rust block names: the first segment of every path (`futures::`,
/// `tokio::main`, `procpool::Pool`) that starts with a lowercase letter and is not
/// the standard library's or a relative one.
fn crates_used(code: &str) -> Vec<String> {
    let mut used = Vec::new();
    let bytes = code.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while let Some(at) = code[i..].find("::") {
        let end = i + at;
        let mut start = end;
        while start > 0 && is_ident(bytes[start - 1]) {
            start -= 1;
        }
        // The first segment only: not preceded by another `::`.
        let first = start < 2 || &code[start - 2..start] != "::";
        let name = &code[start..end];
        if first
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && !["std", "core", "alloc", "crate", "self", "super"].contains(&name)
            && !used.iter().any(|u| u == name)
        {
            used.push(name.to_string());
        }
        i = end + 2;
    }
    used
}

#[test]
fn the_quick_start_lists_every_crate_its_code_uses() {
    let quick = &README[README.find("## Quick start").expect("a quick start")..];
    let toml = blocks(quick, "toml");
    let deps = dependencies(toml.first().expect("a [dependencies] block"));
    assert!(deps.contains(&"procpool".to_string()), "{deps:?}");
    let code = blocks(README, "rust");
    assert!(code.len() >= 2, "the quick start's and Process's code");
    for block in code {
        for name in crates_used(block) {
            assert!(
                deps.contains(&name),
                "the README's code uses `{name}`, which its [dependencies] block ({deps:?}) \
                 does not list"
            );
        }
    }
}

#[test]
fn every_code_block_is_marked() {
    // An unmarked block would be compiled as Rust by rustdoc; shell and TOML blocks
    // say what they are.
    for line in README.lines().filter(|l| l.starts_with("```")) {
        let lang = line.trim_start_matches('`');
        assert!(
            ["", "rust", "rust,no_run", "sh", "toml", "text"].contains(&lang),
            "unexpected block {line:?}"
        );
    }
    let opening: Vec<&str> = README
        .lines()
        .filter(|l| l.starts_with("```"))
        .step_by(2)
        .collect();
    assert!(
        opening.iter().all(|l| l.len() > 3),
        "every block has a language: {opening:?}"
    );
}

#[test]
fn the_checks_catch_a_missing_crate() {
    // The parser itself: a block that uses futures without listing it is caught.
    let deps = dependencies("[dependencies]\nprocpool = \"1\"\ntokio = \"1\"\n");
    let used = crates_used("use futures::StreamExt;\n#[tokio::main]\nasync fn main() {}");
    assert_eq!(used, ["futures", "tokio"]);
    assert!(!deps.contains(&"futures".to_string()));
}
