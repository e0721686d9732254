//! The docs say what the code does: every code reference in README.md and docs/*.md names
//! something that exists, so a learner who follows one lands on real code. A failure lists
//! each stale reference as `page:line: `reference`: why`.
//!
//! What counts as a reference (in prose, inside backticks, unless said otherwise):
//! - a path: a span with a `/` or a file extension (`crates/vmm/src/vcpu.rs`, `guests/asm/`,
//!   `hvf/arm64/mod.rs`, `vcpu.rs`). One that starts at a top-level entry of the repo must
//!   exist as written (`*` matches any one folder); a shorter one must be the tail of some
//!   file or folder. In fenced code blocks, words that look like such paths are checked too.
//!   Links to local files (`[memory](memory.md)`) must resolve from the page.
//! - a script: `scripts/...` must be an executable file, also in fenced code blocks.
//! - a Rust item: `Type::method`, `VmExit::Variant`, `a::b::c`, `name()`, a snake_case name
//!   with an underscore, a CamelCase name, a SCREAMING_CASE name with an underscore. Every
//!   segment (crate names aside) must be declared in a .rs file under `SOURCE_DIRS` (see
//!   `declared_names` for what counts). `VIBE_*` names are environment variables: they must
//!   appear in a .rs or .sh file. Plain words in code font (`vmm`, `pread`) are not checked.
//! - a flag: in a span that starts with `--` or `vibe-vmm`, and on the `vibe-vmm` command
//!   lines of fenced blocks, each `--flag` must be listed by `vibe-vmm run --help`,
//!   `vibe-vmm ctl --help`, `vibe-vmm restore --help` or `vibe-vmm --help`, and a word after `vibe-vmm` must be one of its
//!   commands. Other tools' flags stay in spans that start with the tool
//!   (`cargo test -- --ignored`).
//!
//! Not ours: a name from another project, a spec or the kernel (`kvm_run`, `hv_vcpu_run`,
//! `GuestMemoryMmap`) is marked as such on its page, and then skipped:
//! - listed in an `<!-- external: kvm_run hv_vcpu_run ... -->` comment under the page's title
//!   (it may span lines; it names what the page borrows from elsewhere), or
//! - written as a markdown link's text, code font and all, pointing at its own documentation.
//!
//! Man pages (`poll(2)`) are external by their form.
//!
//! Every docs/*.md page also starts (its first paragraph after the title) by naming a file or
//! folder of the repo it describes, so a reader goes from the page to the code in one step.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Workspace crates (and the language's own): a path segment with one of these names is a
/// crate, not an item.
const CRATES: &[&str] = &[
    "hypervisor",
    "arch",
    "devices",
    "vmm",
    "vfio",
    "test_guests",
    "vibe_vmm",
    "std",
    "core",
    "alloc",
    "crate",
    "self",
    "super",
];

/// Rust's own names (attributes, prelude types and traits): not for this repo to declare.
const LANGUAGE: &[&str] = &[
    "cfg", "Box", "Vec", "String", "Option", "Some", "None", "Result", "Ok", "Err", "Arc", "Mutex",
    "Send", "Sync", "Drop", "Default", "Clone", "Debug",
];

/// Where the Rust items a doc may name are declared.
const SOURCE_DIRS: &[&str] = &["crates", "src", "fuzz", "guests", "tests", "benches"];

/// Build outputs and other untracked trees (see .gitignore): never part of the repo's paths.
const SKIPPED_DIRS: &[&str] = &[".git", "target", "build", "corpus", "artifacts", "coverage"];

/// File extensions that make a backticked span a path even without a `/`.
const EXTENSIONS: &[&str] = &["rs", "md", "sh", "S", "toml", "c", "h", "ld", "json", "yml"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every file and folder of the repo, relative to its root, folders with a trailing `/`.
fn repo_paths() -> Vec<String> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if SKIPPED_DIRS.contains(&name.as_str()) {
                continue;
            }
            let path = format!("{rel}{name}");
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(format!("{path}/"));
                walk(&e.path(), &format!("{path}/"), out);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(root(), "", &mut out);
    out.sort();
    out
}

/// The names a doc may point at. Kept simple on purpose: a name counts as declared when it
/// follows `fn`, `struct`, `enum`, `trait`, `type`, `const`, `static`, `mod`, `union` or
/// `macro_rules!`, or when it starts a line (after `pub`) and is followed by `:`, `,`, `(`,
/// `{`, `=` or the end of the line: an enum variant or a field. A file's stem counts too (a
/// module, or a test, bench or fuzz target: `timer_storm`, `mmio_emulator`). That also
/// accepts a few names that are only used (a struct literal's fields), never one that is
/// nowhere.
fn declared_names(sources: &[(String, String)]) -> HashSet<String> {
    const KEYWORDS: &[&str] = &[
        "fn",
        "struct",
        "enum",
        "trait",
        "type",
        "const",
        "static",
        "mod",
        "union",
        "macro_rules",
    ];
    let mut names = HashSet::new();
    for (path, text) in sources {
        let stem = path.rsplit('/').next().unwrap().trim_end_matches(".rs");
        names.insert(stem.to_string());
        let mut in_use = false;
        for line in text.lines() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            // An import declares nothing, and its `Name,` lines would read as variants.
            if code.starts_with("use ") || code.starts_with("pub use ") {
                in_use = true;
            }
            if in_use {
                in_use = !code.contains(';');
                continue;
            }
            let words = identifiers(code);
            for pair in words.windows(2) {
                if KEYWORDS.contains(&pair[0]) {
                    names.insert(pair[1].to_string());
                }
            }
            // A variant or a field: `Name,` `Name(..)` `Name {` `name: T` `Name = 3`.
            let rest = ["pub(crate) ", "pub(super) ", "pub "]
                .iter()
                .find_map(|p| code.strip_prefix(p))
                .unwrap_or(code);
            let len = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let (name, after) = rest.split_at(len);
            let after = after.trim_start();
            let follows = after.is_empty()
                || after.starts_with([',', '(', '{'])
                || (after.starts_with(':') && !after.starts_with("::"))
                || (after.starts_with('=') && !after.starts_with("==") && !after.starts_with("=>"));
            if is_identifier(name) && follows {
                names.insert(name.to_string());
            }
        }
    }
    names
}

fn identifiers(s: &str) -> Vec<&str> {
    s.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| is_identifier(w))
        .collect()
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Every .rs file under `SOURCE_DIRS` (this test aside: its own text names things on purpose).
fn rust_sources(paths: &[String]) -> Vec<(String, String)> {
    paths
        .iter()
        .filter(|p| p.ends_with(".rs") && p.as_str() != "tests/docs.rs")
        .filter(|p| SOURCE_DIRS.iter().any(|d| p.starts_with(&format!("{d}/"))))
        .map(|p| (p.clone(), fs::read_to_string(root().join(p)).unwrap()))
        .collect()
}

/// The flags and commands the built binary lists: `vibe-vmm --help`, `vibe-vmm run --help`
/// and `vibe-vmm ctl --help`.
struct Cli {
    flags: HashSet<String>,
    commands: HashSet<String>,
}

fn cli() -> Cli {
    let help = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_vibe-vmm"))
            .args(args)
            .output()
            .expect("run vibe-vmm --help");
        assert!(out.status.success(), "vibe-vmm {args:?} failed");
        String::from_utf8(out.stdout).unwrap()
    };
    let mut cli = Cli {
        flags: HashSet::new(),
        commands: HashSet::new(),
    };
    for text in [
        help(&["--help"]),
        help(&["run", "--help"]),
        help(&["ctl", "--help"]),
        help(&["restore", "--help"]),
    ] {
        let mut in_commands = false;
        for line in text.lines() {
            let entry = line.trim_start();
            // An option's line starts with its flags: `-h, --help`, `--kernel <PATH>`.
            if entry.starts_with('-') {
                for word in entry.split([' ', ',']) {
                    if word.starts_with("--") {
                        cli.flags.insert(flag_name(word).to_string());
                    }
                }
            }
            if line.starts_with("Commands:") {
                in_commands = true;
            } else if line.trim().is_empty() {
                in_commands = false;
            } else if in_commands {
                cli.commands
                    .insert(entry.split(' ').next().unwrap().to_string());
            }
        }
    }
    cli
}

/// `--net` of `--net`, `--net=...`, `--serial|` ...: the flag's own name.
fn flag_name(word: &str) -> &str {
    let end = word[2..]
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .map_or(word.len(), |i| i + 2);
    &word[..end]
}

/// What the checks need to know about the repo, built once.
struct Repo {
    paths: Vec<String>,
    /// Top-level entries (`crates/`, `README.md`): a path starting with one is rooted.
    top: Vec<String>,
    names: HashSet<String>,
    /// All .rs and .sh text, for environment variable names.
    code_text: String,
    cli: Cli,
}

impl Repo {
    fn load() -> Repo {
        let paths = repo_paths();
        let sources = rust_sources(&paths);
        let mut code_text: String = sources.iter().map(|(_, t)| t.as_str()).collect();
        for p in paths.iter().filter(|p| p.ends_with(".sh")) {
            code_text += &fs::read_to_string(root().join(p)).unwrap();
        }
        Repo {
            top: paths
                .iter()
                .filter(|p| !p.trim_end_matches('/').contains('/'))
                .cloned()
                .collect(),
            names: declared_names(&sources),
            code_text,
            cli: cli(),
            paths,
        }
    }

    fn is_rooted(&self, path: &str) -> bool {
        self.top
            .iter()
            .any(|t| path == t.trim_end_matches('/') || path.starts_with(t.as_str()))
    }

    /// Whether `path` (relative to the root, `*` for any one folder) is a file or folder.
    fn exists(&self, path: &str) -> bool {
        let want: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        self.paths.iter().any(|p| {
            let have: Vec<&str> = p.trim_end_matches('/').split('/').collect();
            have.len() == want.len() && have.iter().zip(&want).all(|(h, w)| *w == "*" || h == w)
        })
    }

    /// Whether some file or folder ends in `tail` (`hvf/arm64/mod.rs`, `vcpu.rs`).
    fn has_tail(&self, tail: &str) -> bool {
        let tail = tail.trim_end_matches('/');
        self.paths.iter().any(|p| {
            let p = p.trim_end_matches('/');
            p == tail || p.ends_with(&format!("/{tail}"))
        })
    }
}

/// One page, read for its references.
struct Page<'a> {
    name: String,
    text: String,
    external: HashSet<String>,
    repo: &'a Repo,
    problems: Vec<String>,
}

impl Page<'_> {
    fn report(&mut self, line: usize, what: &str, why: String) {
        self.problems
            .push(format!("{}:{line}: `{what}`: {why}", self.name));
    }

    fn check(&mut self) {
        let text = self.text.clone();
        let mut fence = false;
        // A code span may run over a line break: carry the open line on, from its first line.
        let mut open: Option<(usize, String)> = None;
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            if line.trim_start().starts_with("```") {
                fence = !fence;
                continue;
            }
            if fence {
                self.check_code_line(n, line);
                continue;
            }
            let (start, joined) = match open.take() {
                Some((start, before)) => (start, format!("{before} {line}")),
                None => (n, line.to_string()),
            };
            if joined.matches('`').count() % 2 == 1 {
                open = Some((start, joined));
                continue;
            }
            self.check_prose(start, &joined);
        }
        if let Some((start, _)) = open {
            self.report(start, "`", "a code span that never closes".into());
        }
        if self.name.starts_with("docs/") {
            self.check_opening();
        }
    }

    /// A line of a fenced block: scripts, rooted paths and `vibe-vmm` command lines.
    fn check_code_line(&mut self, n: usize, line: &str) {
        let words: Vec<&str> = line
            .split_whitespace()
            .map(|w| w.trim_matches(|c| matches!(c, ',' | ';' | ':' | '(' | ')')))
            .collect();
        for w in &words {
            if !w.contains('/') || w.contains('{') {
                continue;
            }
            let ext = w.rsplit_once('.').map(|(_, e)| e);
            if self.repo.is_rooted(w) {
                self.check_path(n, w);
            } else if ext.is_some_and(|e| EXTENSIONS.contains(&e)) && !self.repo.has_tail(w) {
                self.report(
                    n,
                    w,
                    "no file or folder of the repo ends in this path".into(),
                );
            }
        }
        // `vibe-vmm run ...` and its indented continuation lines (usage blocks, examples).
        let command = words.first().is_some_and(|w| w.ends_with("vibe-vmm"));
        let continued = line.starts_with(' ')
            && words
                .first()
                .is_some_and(|w| w.starts_with("[--") || w.starts_with("--"));
        if command || continued {
            self.check_command(n, &words.join(" "));
        }
    }

    fn check_prose(&mut self, n: usize, line: &str) {
        let links = links(line);
        for (_, target) in &links {
            self.check_link(n, target);
        }
        for (at, span) in code_spans(line) {
            if links.iter().any(|(r, _)| r.contains(&at)) {
                continue; // inside a link's text: marked as someone else's
            }
            self.check_span(n, span);
        }
    }

    fn check_link(&mut self, n: usize, target: &str) {
        if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
            return;
        }
        let file = target.split('#').next().unwrap();
        let dir = Path::new(&self.name).parent().unwrap_or(Path::new(""));
        let path = normalize(&dir.join(file));
        if !self.repo.exists(&path) {
            self.report(
                n,
                target,
                format!("the link points at {path}, which does not exist"),
            );
        }
    }

    fn check_span(&mut self, n: usize, span: &str) {
        let span = span.trim();
        let first = span.split_whitespace().next().unwrap_or("");
        if span.starts_with("--") || first.ends_with("vibe-vmm") {
            return self.check_command(n, span);
        }
        if first.starts_with("scripts/") {
            return self.check_path(n, first);
        }
        if first.contains("::") {
            // `VmConfig::ioeventfd = false`, `VmExit::MmioInstruction { gpa }`: the path.
            return self.check_item(n, first);
        }
        if span.contains(char::is_whitespace) || span.contains("://") || span.starts_with('/') {
            return; // prose in code font, a URL, a host path (`/dev/kvm`)
        }
        let ext = span.rsplit_once('.').map(|(_, e)| e);
        if span.contains('/') || ext.is_some_and(|e| EXTENSIONS.contains(&e)) {
            if self.repo.is_rooted(span) {
                self.check_path(n, span);
            } else if !self.repo.has_tail(span) {
                self.report(
                    n,
                    span,
                    "no file or folder of the repo ends in this path".into(),
                );
            }
            return;
        }
        self.check_item(n, span);
    }

    fn check_path(&mut self, n: usize, path: &str) {
        if !self.repo.exists(path) {
            return self.report(n, path, "no such file or folder in the repo".into());
        }
        if path.starts_with("scripts/") && !is_executable(&root().join(path)) {
            self.report(n, path, "the script is not executable (chmod +x)".into());
        }
    }

    /// `--flag`s of a `vibe-vmm` command or a lone flag, and the command word after `vibe-vmm`.
    fn check_command(&mut self, n: usize, text: &str) {
        if !cfg!(target_arch = "x86_64") {
            return; // other builds list fewer flags (no --no-acpi on arm64); x86 has them all
        }
        let words: Vec<&str> = text.split_whitespace().collect();
        if let Some(i) = words.iter().position(|w| w.ends_with("vibe-vmm")) {
            let next = words.get(i + 1).copied().unwrap_or("");
            if is_identifier(next) && !self.repo.cli.commands.contains(next) {
                self.report(n, next, "not a command `vibe-vmm --help` lists".into());
            }
        }
        for w in words {
            let w = w.trim_start_matches(['[', '(']);
            if w.starts_with("--") && w.len() > 2 {
                let flag = flag_name(w);
                if !self.repo.cli.flags.contains(flag) {
                    self.report(
                        n,
                        flag,
                        "not a flag `vibe-vmm run --help` or `vibe-vmm --help` lists".into(),
                    );
                }
            }
        }
    }

    /// A span that looks like a Rust item, per the rules at the top of this file.
    fn check_item(&mut self, n: usize, span: &str) {
        let span = match span.split_once('=') {
            Some((var, _)) if var.starts_with("VIBE_") => var,
            _ => span,
        };
        let (path, called) = match span.split_once('(') {
            Some((p, args)) if args.ends_with(')') => {
                let args = &args[..args.len() - 1];
                if !args.is_empty() && args.chars().all(|c| c.is_ascii_digit()) {
                    return; // a man page: `poll(2)`
                }
                (p, true)
            }
            Some(_) => return,
            None => (span, false),
        };
        let segments: Vec<&str> = path.split("::").collect();
        if !segments.iter().all(|s| is_identifier(s)) {
            return; // not a name: `0x1000`, `virtio_mmio.device=`, `hv_gic_*`
        }
        let single = segments.len() == 1;
        if single && !called && !looks_like_item(path) {
            return; // a plain word in code font: `vmm`, `emulate`, `lz4`
        }
        if self.external.contains(path) || segments.iter().any(|s| self.external.contains(*s)) {
            return;
        }
        if single && path.starts_with("VIBE_") {
            if !self.repo.code_text.contains(path) {
                self.report(
                    n,
                    span,
                    "no .rs or .sh file reads this environment variable".into(),
                );
            }
            return;
        }
        for s in segments {
            if !CRATES.contains(&s) && !LANGUAGE.contains(&s) && !self.repo.names.contains(s) {
                let why = format!("nothing named `{s}` is declared in the source");
                return self.report(n, span, why);
            }
        }
    }

    /// The first paragraph after the title must name a file or folder of the repo.
    fn check_opening(&mut self) {
        let text = self.text.clone();
        let mut in_comment = false;
        let mut first = None;
        let mut paragraph = String::new();
        for (i, l) in text.lines().enumerate() {
            // The title, and comments (`<!-- external: ... -->`, over one line or several).
            if in_comment || l.trim_start().starts_with("<!--") {
                in_comment = !l.contains("-->");
                continue;
            }
            if first.is_none() && l.starts_with("# ") {
                continue;
            }
            if l.trim().is_empty() {
                if first.is_some() {
                    break;
                }
                continue;
            }
            first.get_or_insert(i + 1);
            paragraph += l;
            paragraph += " ";
        }
        let named = code_spans(&paragraph)
            .into_iter()
            .any(|(_, s)| s.contains('/') && self.repo.is_rooted(s) && self.repo.exists(s));
        if !named {
            self.report(
                first.unwrap_or(1),
                "first paragraph",
                "names no file or folder of the repo: start the page with what it covers \
                 and which files it describes (e.g. `crates/vmm/src/vcpu.rs`)"
                    .into(),
            );
        }
    }
}

/// SCREAMING_CASE, snake_case with an underscore, or CamelCase: a name, not a word.
fn looks_like_item(s: &str) -> bool {
    let upper = s.starts_with(|c: char| c.is_ascii_uppercase());
    let has_lower = s.contains(|c: char| c.is_ascii_lowercase());
    let has_upper = s.contains(|c: char| c.is_ascii_uppercase());
    let screaming = upper && !has_lower && s.contains('_');
    let snake = !has_upper && s.contains('_');
    let camel = upper && has_lower && !s.contains('_');
    screaming || snake || camel
}

/// The code spans of a line, with the byte offset of each opening backtick.
fn code_spans(line: &str) -> Vec<(usize, &str)> {
    let ticks: Vec<usize> = line.match_indices('`').map(|(i, _)| i).collect();
    ticks
        .chunks_exact(2)
        .map(|p| (p[0], &line[p[0] + 1..p[1]]))
        .filter(|(_, s)| !s.is_empty())
        .collect()
}

/// The markdown links of a line: the byte range of `[text]` and the target.
fn links(line: &str) -> Vec<(std::ops::Range<usize>, &str)> {
    let mut out = Vec::new();
    for (mid, _) in line.match_indices("](") {
        let Some(open) = line[..mid].rfind('[') else {
            continue;
        };
        let Some(close) = line[mid + 2..].find(')') else {
            continue;
        };
        out.push((open..mid, &line[mid + 2..mid + 2 + close]));
    }
    out
}

/// `docs/../README.md` -> `README.md`, without touching the file system.
fn normalize(p: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in p.components() {
        match c.as_os_str().to_str().unwrap() {
            "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s.to_string()),
        }
    }
    parts.join("/")
}

#[cfg(unix)]
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(p: &Path) -> bool {
    p.is_file()
}

/// Names listed in `<!-- external: ... -->` comments anywhere on the page.
fn external_names(text: &str) -> HashSet<String> {
    let mut names = HashSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("<!-- external:") {
        let body = &rest[start + "<!-- external:".len()..];
        let end = body.find("-->").unwrap_or(body.len());
        names.extend(body[..end].split_whitespace().map(str::to_string));
        rest = &body[end..];
    }
    names
}

fn pages() -> Vec<PathBuf> {
    let mut pages = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = fs::read_dir(root().join("docs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// The problems on one page, each as `page:line: `reference`: why`.
fn check_page(name: &str, text: &str, repo: &Repo) -> Vec<String> {
    let mut page = Page {
        name: name.to_string(),
        text: text.to_string(),
        external: external_names(text),
        repo,
        problems: Vec::new(),
    };
    page.check();
    page.problems
}

fn repo() -> &'static Repo {
    static REPO: OnceLock<Repo> = OnceLock::new();
    REPO.get_or_init(Repo::load)
}

#[test]
fn every_code_reference_in_the_docs_exists() {
    let mut problems = Vec::new();
    for path in pages() {
        let name = path.strip_prefix(root()).unwrap().to_string_lossy();
        problems.extend(check_page(
            &name,
            &fs::read_to_string(&path).unwrap(),
            repo(),
        ));
    }
    let mut msg = String::new();
    for p in &problems {
        writeln!(msg, "  {p}").unwrap();
    }
    assert!(
        problems.is_empty(),
        "{} stale reference(s) in the docs:\n{msg}\
         Fix each doc to say what the code does now. A name that belongs to another project, a \
         spec or the kernel goes in the page's `<!-- external: ... -->` comment; a path or \
         command that is not ours can stay out of backticks (the top of tests/docs.rs says what \
         is checked).",
        problems.len()
    );
}

/// The checker itself, on a page made up to drift in every way it knows.
#[test]
fn the_checker_finds_what_drifted() {
    let page = "# A page\n\
        <!-- external: kvm_run -->\n\
        Reads `crates/vmm/src/vcpu.rs`, `crates/vmm/src/gone.rs` and `gone/vcpu.rs`.\n\
        Calls `Vm::start`, `Vm::vanished()`, `kvm_run`, [`hv_vm_create`](https://x) and `Gone`,\n\
        not `lowercase` words or `poll(2)`; runs `scripts/test.sh`, `scripts/gone.sh`, and\n\
        `vibe-vmm run --disk x --gone`; see [memory](memory.md) and [gone](gone.md).\n\
        \n\
        Later: `VIBE_SKIP_LINUX=1`, `VIBE_GONE`.\n";
    let found = check_page("docs/test.md", page, repo());
    let mut expected = vec![
        "docs/test.md:3: `crates/vmm/src/gone.rs`: no such file or folder in the repo",
        "docs/test.md:3: `gone/vcpu.rs`: no file or folder of the repo ends in this path",
        "docs/test.md:4: `Vm::vanished()`: nothing named `vanished` is declared in the source",
        "docs/test.md:4: `Gone`: nothing named `Gone` is declared in the source",
        "docs/test.md:5: `scripts/gone.sh`: no such file or folder in the repo",
        "docs/test.md:6: `gone.md`: the link points at docs/gone.md, which does not exist",
        "docs/test.md:8: `VIBE_GONE`: no .rs or .sh file reads this environment variable",
    ];
    if cfg!(target_arch = "x86_64") {
        expected.insert(
            6,
            "docs/test.md:6: `--gone`: not a flag `vibe-vmm run --help` or `vibe-vmm --help` lists",
        );
    }
    assert_eq!(found, expected);
    // A page that never says which code it describes.
    let found = check_page("docs/test.md", "# A page\n\nAbout things.\n", repo());
    assert_eq!(
        found,
        ["docs/test.md:3: `first paragraph`: names no file or folder of the repo: start the page \
          with what it covers and which files it describes (e.g. `crates/vmm/src/vcpu.rs`)"]
    );
}
