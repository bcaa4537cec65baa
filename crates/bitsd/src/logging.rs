//! The log on standard error, in two formats, neither of which lets logged text forge a record
//! or drive the terminal showing it.
//!
//! Field values often hold what clients chose: paths, user names from Basic, NTLM or Kerberos
//! credentials, error messages quoting them. NTLM carries UTF-16 inside base64, so a user name
//! can hold CR, LF or ESC, which no HTTP header could. tracing-subscriber's default human
//! format writes `%` (Display) and `?` (Debug) values raw, so a name holding `\n` plus a
//! timestamp forged a whole record. Here every control character (Unicode class Cc: C0,
//! DEL, C1) in a field value or in the message is written as its Rust escape: `\n`, `\r`,
//! `\t`, and `\u{1b}` style for the others — the form string fields (`user="a\nb"`) already had.
//! The json format was already one object per line (serde_json escapes C0), but left DEL and
//! the C1 controls raw, which some terminals obey (U+009B is an 8-bit CSI); they are
//! escaped too, as `\u007f`, `\u009b`, which JSON readers decode to the same text.
//!
//! A backslash is not escaped in the human format, so `\n` there may also be a client's
//! backslash and `n`; the json format is the exact one.

use std::fmt::{self, Write as _};
use std::io;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::MakeWriter;

/// The human format's fields: like tracing-subscriber's `DefaultFields` (message first, then
/// `name=value`, names in italics on a terminal), with control characters escaped.
#[derive(Clone, Copy, Debug, Default)]
pub struct EscapedFields;

impl<'a> MakeVisitor<Writer<'a>> for EscapedFields {
    type Visitor = EscapedVisitor<'a>;

    fn make_visitor(&self, target: Writer<'a>) -> Self::Visitor {
        EscapedVisitor {
            writer: target,
            is_empty: true,
            result: Ok(()),
        }
    }
}

pub struct EscapedVisitor<'a> {
    writer: Writer<'a>,
    is_empty: bool,
    result: fmt::Result,
}

impl EscapedVisitor<'_> {
    /// `name=` (after a space unless it is the first field); the message has no name.
    fn name(&mut self, name: &str) -> fmt::Result {
        if self.is_empty {
            self.is_empty = false;
        } else {
            self.writer.write_char(' ')?;
        }
        if name == "message" {
            return Ok(());
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.label(name, "")
    }

    /// `name` + `suffix` + `=`, in the formatter's own styling on a terminal (italic name,
    /// dimmed `=`), which is never escaped: it is not logged text.
    fn label(&mut self, name: &str, suffix: &str) -> fmt::Result {
        if self.writer.has_ansi_escapes() {
            write!(self.writer, "\x1b[3m{name}\x1b[0m")?;
            if !suffix.is_empty() {
                write!(self.writer, "\x1b[3m{suffix}\x1b[0m")?;
            }
            self.writer.write_str("\x1b[2m=\x1b[0m")
        } else {
            write!(self.writer, "{name}{suffix}=")
        }
    }

    /// `DefaultFields`' form: `error=outer error.sources=[inner, innermost]`.
    fn error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) -> fmt::Result {
        self.name(field.name())?;
        write!(Escaped(&mut self.writer), "{value}")?;
        let mut source = value.source();
        if source.is_none() {
            return Ok(());
        }
        self.writer.write_char(' ')?;
        self.label(field.name(), ".sources")?;
        self.writer.write_char('[')?;
        let mut first = true;
        while let Some(s) = source {
            if !first {
                self.writer.write_str(", ")?;
            }
            first = false;
            write!(Escaped(&mut self.writer), "{s}")?;
            source = s.source();
        }
        self.writer.write_char(']')
    }
}

impl Visit for EscapedVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            // Quoted, as `DefaultFields` writes strings.
            self.record_debug(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.result.is_ok() {
            self.result = self.error(field, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // Records forwarded from the `log` crate carry their metadata as `log.*` fields, which
        // the formatter has shown already.
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        self.result = self
            .name(field.name())
            .and_then(|()| write!(Escaped(&mut self.writer), "{value:?}"));
    }
}

impl VisitOutput<fmt::Result> for EscapedVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for EscapedVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

/// Passes text on with each control character as its Rust escape.
struct Escaped<W>(W);

impl<W: fmt::Write> fmt::Write for Escaped<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut clean = 0;
        for (i, c) in s.char_indices() {
            if !c.is_control() {
                continue;
            }
            self.0.write_str(&s[clean..i])?;
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
            }
            clean = i + c.len_utf8();
        }
        self.0.write_str(&s[clean..])
    }
}

/// Standard error for the json format, with DEL and the C1 controls written as JSON escapes.
/// They can only occur inside JSON strings (everything else serde_json writes is ASCII
/// punctuation, digits and field names), so the line stays the same JSON value.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonStderr;

impl<'a> MakeWriter<'a> for JsonStderr {
    type Writer = JsonEscaping<io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        JsonEscaping(io::stderr())
    }
}

pub struct JsonEscaping<W>(W);

impl<W: io::Write> io::Write for JsonEscaping<W> {
    /// Takes the whole buffer, so a two-byte C1 character is never split between calls (the
    /// formatter hands over each record in one buffer).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = Vec::new();
        let mut clean = 0;
        let mut i = 0;
        while i < buf.len() {
            let escaped = match buf[i] {
                0x7f => Some((0x7f, 1)),
                // U+0080..U+009F are 0xC2 0x80..0x9F in UTF-8.
                0xc2 if buf.get(i + 1).is_some_and(|b| (0x80..=0x9f).contains(b)) => {
                    Some((u32::from(buf[i + 1]), 2))
                }
                _ => None,
            };
            match escaped {
                Some((code, len)) => {
                    out.extend_from_slice(&buf[clean..i]);
                    out.extend_from_slice(format!("\\u{code:04x}").as_bytes());
                    i += len;
                    clean = i;
                }
                None => i += 1,
            }
        }
        if clean == 0 {
            self.0.write_all(buf)?;
        } else {
            out.extend_from_slice(&buf[clean..]);
            self.0.write_all(&out)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::format::DefaultFields;
    use tracing_subscriber::fmt::FormatFields;

    /// What a human-format subscriber with `fields` writes for the events `emit` sends.
    fn human<N>(fields: N, ansi: bool, emit: impl FnOnce()) -> String
    where
        N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || Sink(sink.clone()))
            .with_ansi(ansi)
            .without_time()
            .fmt_fields(fields)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = out.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8(bytes).unwrap_or_default()
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Ok(mut b) = self.0.lock() {
                b.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// An error saying `.0`, caused by `.1`.
    #[derive(Debug)]
    struct Outer(&'static str, io::Error);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.1)
        }
    }

    const HOSTILE: &str = "a\nb\rc\td\x1b[31me\x07\x7f\u{9b}f\u{85}";
    const SHOWN: &str = "a\\nb\\rc\\td\\u{1b}[31me\\u{7}\\u{7f}\\u{9b}f\\u{85}";

    fn hostile_event() {
        let err = Outer("outer\nline", io::Error::other("inner\x1b"));
        tracing::info!(
            display = %HOSTILE,
            debug = ?format_args!("{HOSTILE}"),
            string = HOSTILE,
            error = &err as &(dyn std::error::Error + 'static),
            r#type = 1,
            "message {HOSTILE}"
        );
    }

    #[test]
    fn control_characters_are_escaped_in_every_kind_of_field() {
        let text = human(EscapedFields, false, hostile_event);
        assert_eq!(text.matches('\n').count(), 1, "{text:?}");
        assert!(!text.trim_end().chars().any(char::is_control), "{text:?}");
        assert!(
            text.contains(&format!("message {SHOWN} display={SHOWN} debug={SHOWN} ")),
            "{text}"
        );
        // Strings were quoted and Debug-escaped before: unchanged.
        assert!(text.contains(&format!("string={HOSTILE:?}")), "{text}");
        assert!(
            text.contains("error=outer\\nline error.sources=[inner\\u{1b}] type=1"),
            "{text}"
        );
        // What tracing-subscriber's own fields wrote: the forged line.
        assert!(
            human(DefaultFields::new(), false, hostile_event)
                .matches('\n')
                .count()
                > 1
        );
    }

    #[test]
    fn text_without_control_characters_is_written_as_before() {
        for ansi in [false, true] {
            let event = || {
                let err = Outer("outer", io::Error::other("inner"));
                tracing::warn!(n = 3, path = "/a b", shown = %"x y", ?ansi, r#type = ?'c', "ready");
                tracing::error!(error = &err as &(dyn std::error::Error + 'static), "failed");
                tracing::info!("just a message");
            };
            let ours = human(EscapedFields, ansi, event);
            assert_eq!(
                ours,
                human(DefaultFields::new(), ansi, event),
                "ansi {ansi}"
            );
        }
    }

    #[test]
    fn on_a_terminal_only_the_formatters_own_styling_is_raw() {
        let text = human(
            EscapedFields,
            true,
            || tracing::info!(user = %"\x1b[2J", "x\x1bm"),
        );
        // Names italic, `=` dimmed: the formatter's codes. The logged ESCs are spelt out.
        assert!(
            text.contains("x\\u{1b}m \x1b[3muser\x1b[0m\x1b[2m=\x1b[0m\\u{1b}[2J"),
            "{text:?}"
        );
    }

    #[test]
    fn json_lines_escape_del_and_c1_and_stay_the_same_json() {
        let value = "a\u{7f}b\u{80}c\u{9b}d\u{9f}e\u{a0}é\n";
        let line = serde_json::json!({ "user": value }).to_string();
        let mut out = Vec::new();
        JsonEscaping(&mut out).write_all(line.as_bytes()).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(!out.chars().any(char::is_control), "{out:?}");
        assert!(
            out.contains("a\\u007fb\\u0080c\\u009bd\\u009fe\u{a0}é\\n"),
            "{out}"
        );
        let back: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(back["user"], value);
    }
}
