//! `vibe-vmm run --config FILE`: the `run` flags from a file, so that a VM is described once.
//! The keys are the flags' names (`memory`, `cpus`, `disk`, `api_socket`, ...; `-` or `_`),
//! the values what the flag takes; flags given on the command line win over the file (a
//! repeatable flag such as `--disk` given there replaces the file's whole list).
//!
//! Two formats: TOML (a flat file of `key = value` lines: strings, integers, booleans and
//! arrays of strings, `#` comments; no tables) and JSON (one object), chosen by the file's
//! extension. Every error names the key and the line. The file becomes flags (`--memory`,
//! `512M`), which clap then checks as it checks the command line, one key at a time.

use std::path::Path;

/// A value as the file wrote it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
    List(Vec<String>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Str(_) => "a string",
            Value::Int(_) => "an integer",
            Value::Bool(_) => "a boolean",
            Value::List(_) => "an array",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub value: Value,
    pub line: usize,
}

/// What each key takes.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// A string.
    Text,
    /// A size or count: a string or an integer.
    Number,
    /// A switch: true gives the flag, false leaves it out.
    Switch,
    /// A repeatable flag: an array of strings (or one string).
    Repeat,
}

const KEYS: &[(&str, Kind)] = &[
    ("kernel", Kind::Text),
    ("initrd", Kind::Text),
    ("cmdline", Kind::Text),
    ("memory", Kind::Number),
    ("cpus", Kind::Number),
    ("console", Kind::Text),
    ("serial", Kind::Text),
    ("disk", Kind::Repeat),
    ("net", Kind::Repeat),
    ("no_acpi", Kind::Switch),
    ("irqchip", Kind::Text),
    ("transport", Kind::Text),
    ("cpuid_hide", Kind::Text),
    ("device", Kind::Repeat),
    ("vfio", Kind::Repeat),
    ("seccomp", Kind::Text),
    ("api_socket", Kind::Text),
    ("no_reboot", Kind::Switch),
    ("stats", Kind::Switch),
    ("trace", Kind::Text),
    ("trace_file", Kind::Text),
];

/// Reads `path` (TOML, or JSON for a `.json` file) into entries.
pub fn read(path: &Path) -> Result<Vec<Entry>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
    let parsed = if path.extension().is_some_and(|e| e == "json") {
        parse_json(&text)
    } else {
        parse_toml(&text)
    };
    parsed.map_err(|e| format!("{}: {e}", path.display()))
}

/// The flat TOML subset: `key = value` per line.
pub fn parse_toml(text: &str) -> Result<Vec<Entry>, String> {
    let mut entries: Vec<Entry> = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = i + 1;
        let l = strip_comment(lines[i]).trim();
        i += 1;
        if l.is_empty() {
            continue;
        }
        if l.starts_with('[') {
            return Err(format!(
                "line {line}: tables ({l}) are not used: write key = value lines"
            ));
        }
        let Some((key, value)) = l.split_once('=') else {
            return Err(format!("line {line}: expected key = value, found {l:?}"));
        };
        let key = key.trim().trim_matches('"').replace('-', "_");
        let mut value = value.trim().to_string();
        // An array may go on over several lines, up to its `]`.
        if value.starts_with('[') {
            while !value.ends_with(']') && i < lines.len() {
                value.push(' ');
                value.push_str(strip_comment(lines[i]).trim());
                i += 1;
            }
        }
        let value = toml_value(&value).map_err(|e| format!("line {line}: {key}: {e}"))?;
        if let Some(prev) = entries.iter().find(|e| e.key == key) {
            return Err(format!(
                "line {line}: {key} is already set on line {}",
                prev.line
            ));
        }
        entries.push(Entry { key, value, line });
    }
    Ok(entries)
}

/// A line without its `#` comment (a `#` inside a string stays).
fn strip_comment(line: &str) -> &str {
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match c {
            '\\' if in_string => escaped = !escaped,
            '"' if !escaped => in_string = !in_string,
            '#' if !in_string => return &line[..i],
            _ => escaped = false,
        }
        if c != '\\' {
            escaped = false;
        }
    }
    line
}

fn toml_value(s: &str) -> Result<Value, String> {
    if s == "true" || s == "false" {
        return Ok(Value::Bool(s == "true"));
    }
    if s.starts_with('"') {
        return toml_string(s).map(Value::Str);
    }
    if let Some(inner) = s.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| format!("array {s:?} has no closing ]"))?;
        let mut items = Vec::new();
        let mut rest = inner.trim();
        while !rest.is_empty() {
            if !rest.starts_with('"') {
                return Err(format!("array items must be strings, found {rest:?}"));
            }
            let end = string_end(rest).ok_or_else(|| format!("unterminated string {rest:?}"))?;
            items.push(toml_string(&rest[..end])?);
            rest = rest[end..].trim_start();
            rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
        }
        return Ok(Value::List(items));
    }
    s.replace('_', "")
        .parse::<i64>()
        .map(Value::Int)
        .map_err(|_| {
            format!("{s:?} is not a string, integer, boolean or array (strings take quotes)")
        })
}

/// Where the string starting at `s[0] == '"'` ends (just past its closing quote).
fn string_end(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return Some(i + 1),
            _ => escaped = false,
        }
    }
    None
}

fn toml_string(s: &str) -> Result<String, String> {
    let end = string_end(s).ok_or_else(|| format!("unterminated string {s}"))?;
    if end != s.len() {
        return Err(format!("unexpected {:?} after the string", &s[end..]));
    }
    let mut out = String::new();
    let mut chars = s[1..end - 1].chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('"') => out.push('"'),
            Some('\\') => out.push('\\'),
            other => return Err(format!("unknown escape \\{}", other.unwrap_or(' '))),
        }
    }
    Ok(out)
}

/// One JSON object; a key's line is where it first appears in the text.
pub fn parse_json(text: &str) -> Result<Vec<Entry>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let serde_json::Value::Object(map) = v else {
        return Err("the file must hold one JSON object".into());
    };
    let line_of = |key: &str| {
        let quoted = format!("\"{key}\"");
        text.lines()
            .position(|l| l.contains(&quoted))
            .map_or(0, |n| n + 1)
    };
    let mut entries = Vec::new();
    for (key, value) in map {
        let line = line_of(&key);
        let value = match value {
            serde_json::Value::String(s) => Value::Str(s),
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) if n.is_i64() => Value::Int(n.as_i64().unwrap_or(0)),
            serde_json::Value::Array(items) => Value::List(
                items
                    .into_iter()
                    .map(|i| match i {
                        serde_json::Value::String(s) => Ok(s),
                        other => Err(format!(
                            "line {line}: {key}: array items must be strings, found {other}"
                        )),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            other => {
                return Err(format!(
                    "line {line}: {key}: {other} is not a string, integer, boolean or array"
                ))
            }
        };
        entries.push(Entry {
            key: key.replace('-', "_"),
            value,
            line,
        });
    }
    Ok(entries)
}

/// The entries as `run` flags, each checked for its key and type. `given` says whether the
/// command line has a flag (then the file's value is left out: the command line wins).
/// Each item: ("line N: key", the flags it becomes).
pub fn to_flags(
    entries: &[Entry],
    given: impl Fn(&str) -> bool,
) -> Result<Vec<(String, Vec<String>)>, String> {
    let mut flags = Vec::new();
    for e in entries {
        let at = format!("line {}: {}", e.line, e.key);
        let Some(&(_, kind)) = KEYS.iter().find(|(k, _)| *k == e.key) else {
            let known: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
            return Err(format!(
                "line {}: unknown key {:?} (known: {})",
                e.line,
                e.key,
                known.join(", ")
            ));
        };
        let flag = format!("--{}", e.key.replace('_', "-"));
        let wrong = |want: &str| format!("{at}: expected {want}, found {}", e.value.kind());
        let mut one = vec![flag.clone()];
        match (kind, &e.value) {
            (Kind::Text | Kind::Number, Value::Str(s)) => one.push(s.clone()),
            (Kind::Number, Value::Int(n)) => one.push(n.to_string()),
            (Kind::Text, _) => return Err(wrong("a string")),
            (Kind::Number, _) => return Err(wrong("a string or an integer")),
            (Kind::Switch, Value::Bool(true)) => {}
            (Kind::Switch, Value::Bool(false)) => one.clear(),
            (Kind::Switch, _) => return Err(wrong("true or false")),
            (Kind::Repeat, Value::Str(s)) => one.push(s.clone()),
            (Kind::Repeat, Value::List(items)) => {
                one.clear();
                for item in items {
                    one.extend([flag.clone(), item.clone()]);
                }
            }
            (Kind::Repeat, _) => return Err(wrong("an array of strings")),
        }
        if given(&flag) || one.is_empty() {
            continue;
        }
        flags.push((at, one));
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_subset() {
        let text = "# a VM\nmemory = \"256M\"  # RAM\ncpus = 2\nstats = true\n\
                    disk = [\"a.img\",\n  \"b.img,readonly\"]\ncmdline = \"console=ttyS0 # not a comment\"\n";
        let e = parse_toml(text).unwrap();
        assert_eq!(e[0].value, Value::Str("256M".into()));
        assert_eq!((e[1].line, &e[1].value), (3, &Value::Int(2)));
        assert_eq!(
            e[3].value,
            Value::List(vec!["a.img".into(), "b.img,readonly".into()])
        );
        assert_eq!(e[4].line, 7);
        assert_eq!(
            e[4].value,
            Value::Str("console=ttyS0 # not a comment".into())
        );
        let flags = to_flags(&e, |f| f == "--cpus").unwrap();
        assert_eq!(flags[0].1, ["--memory", "256M"]);
        assert_eq!(flags[0].0, "line 2: memory");
        assert_eq!(flags[1].1, ["--stats"]);
        assert_eq!(flags[2].1, ["--disk", "a.img", "--disk", "b.img,readonly"]);
    }

    #[test]
    fn no_reboot_is_a_switch() {
        let on = parse_toml("no_reboot = true\napi_socket = \"/tmp/a.sock\"\n").unwrap();
        let flags = to_flags(&on, |_| false).unwrap();
        assert_eq!(flags[0].1, ["--no-reboot"]);
        assert_eq!(flags[1].1, ["--api-socket", "/tmp/a.sock"]);
        let off = parse_json("{\"no_reboot\": false}").unwrap();
        assert!(to_flags(&off, |_| false).unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_key_and_the_line() {
        let err = |t: &str| {
            parse_toml(t)
                .and_then(|e| to_flags(&e, |_| false))
                .unwrap_err()
        };
        assert_eq!(
            err("cpus = 1\nmemroy = \"1G\"\n"),
            "line 2: unknown key \"memroy\" (known: kernel, initrd, cmdline, memory, cpus, \
             console, serial, disk, net, no_acpi, irqchip, transport, cpuid_hide, device, vfio, \
             seccomp, api_socket, no_reboot, stats, trace, trace_file)"
        );
        assert_eq!(
            err("\nstats = \"yes\""),
            "line 2: stats: expected true or false, found a string"
        );
        assert_eq!(
            err("disk = 5"),
            "line 1: disk: expected an array of strings, found an integer"
        );
        assert!(err("memory = 512M").starts_with("line 1: memory: \"512M\" is not"));
        assert!(err("[vm]\n").contains("line 1: tables"));
        assert!(err("cpus = 1\ncpus = 2").contains("line 2: cpus is already set on line 1"));
        assert!(err("kernel = \"a").contains("line 1: kernel: unterminated"));
        let json = parse_json("{\n  \"cpus\": 2,\n  \"stats\": 1\n}")
            .and_then(|e| to_flags(&e, |_| false))
            .unwrap_err();
        assert_eq!(
            json,
            "line 3: stats: expected true or false, found an integer"
        );
        assert!(parse_json("{\"cpus\": }").unwrap_err().contains("line 1"));
    }
}
