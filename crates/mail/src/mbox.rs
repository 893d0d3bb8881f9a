//! Splitting an mbox stream into mails, one at a time, so memory does not
//! grow with the archive.
//!
//! A message starts at a line beginning with `From ` (as Python's `mailbox`
//! and Patchwork read them). Quoted lines are unquoted the mboxrd way: one `>`
//! is removed from any line matching `>+From `. That is also right for mboxo
//! (`>From ` → `From `); mboxo alone cannot tell a quoted line from one that
//! really began with `>From `, so such a line loses its `>`, as every mboxo
//! reader does. CRLF line endings are kept as they are.

use std::io::{self, BufRead};

/// Reads mails out of an mbox stream.
pub struct MboxReader<R> {
    input: R,
    line: Vec<u8>,
    /// The separator line of the next message has been read already.
    started: bool,
    done: bool,
    offset: u64,
}

/// One mail out of an mbox, without its `From ` line, unquoted.
#[derive(Debug)]
pub struct MboxMail {
    /// Byte offset of the mail's `From ` line in the stream.
    pub offset: u64,
    /// The mail itself.
    pub raw: Vec<u8>,
}

impl<R: BufRead> MboxReader<R> {
    /// Reads from `input`; text before the first `From ` line is skipped.
    pub fn new(input: R) -> Self {
        MboxReader { input, line: Vec::new(), started: false, done: false, offset: 0 }
    }

    /// Bytes consumed so far, for progress reports.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn read_line(&mut self) -> io::Result<bool> {
        self.line.clear();
        let n = self.input.read_until(b'\n', &mut self.line)?;
        self.offset += n as u64;
        Ok(n > 0)
    }
}

fn is_separator(line: &[u8]) -> bool {
    line.starts_with(b"From ")
}

/// `>From `, `>>From `…: a quoted line whose first `>` is to be removed.
fn is_quoted_from(line: &[u8]) -> bool {
    let gts = line.iter().take_while(|&&b| b == b'>').count();
    gts > 0 && line[gts..].starts_with(b"From ")
}

impl<R: BufRead> Iterator for MboxReader<R> {
    type Item = io::Result<MboxMail>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        // Find the separator (skipping a preamble on the first call).
        if !self.started {
            loop {
                match self.read_line() {
                    Err(e) => return Some(Err(e)),
                    Ok(false) => {
                        self.done = true;
                        return None;
                    }
                    Ok(true) if is_separator(&self.line) => break,
                    Ok(true) => {}
                }
            }
            self.started = true;
        }
        let offset = self.offset - self.line.len() as u64;
        let mut raw = Vec::new();
        loop {
            match self.read_line() {
                Err(e) => return Some(Err(e)),
                Ok(false) => {
                    self.done = true;
                    break;
                }
                Ok(true) if is_separator(&self.line) => break,
                Ok(true) if is_quoted_from(&self.line) => raw.extend_from_slice(&self.line[1..]),
                Ok(true) => raw.extend_from_slice(&self.line),
            }
        }
        // The blank line that precedes the next separator belongs to the mbox, not the mail.
        if !self.done || raw.ends_with(b"\n\n") {
            if raw.ends_with(b"\r\n\r\n") {
                raw.truncate(raw.len() - 2);
            } else if raw.ends_with(b"\n\n") {
                raw.truncate(raw.len() - 1);
            }
        }
        Some(Ok(MboxMail { offset, raw }))
    }
}

/// Quotes a mail for an mboxrd file: `>` before every line matching `>*From `.
pub fn write_mboxrd(out: &mut Vec<u8>, raw: &[u8]) {
    out.extend_from_slice(b"From mboxrd@z Thu Jan  1 00:00:00 1970\n");
    for line in raw.split_inclusive(|&b| b == b'\n') {
        let gts = line.iter().take_while(|&&b| b == b'>').count();
        if line[gts..].starts_with(b"From ") {
            out.push(b'>');
        }
        out.extend_from_slice(line);
    }
    if !raw.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(data: &[u8]) -> Vec<Vec<u8>> {
        MboxReader::new(data).map(|m| m.unwrap().raw).collect()
    }

    #[test]
    fn splits_and_unquotes() {
        let data = b"preamble\nFrom a@b Mon Jan  1 00:00:00 2024\nSubject: one\n\n>From here\n>>From there\nbody\n\nFrom c@d Mon Jan  1 00:00:00 2024\nSubject: two\n\nx\n";
        let mails = split(data);
        assert_eq!(mails.len(), 2);
        assert_eq!(mails[0], b"Subject: one\n\nFrom here\n>From there\nbody\n");
        assert_eq!(mails[1], b"Subject: two\n\nx\n");
    }

    #[test]
    fn round_trips_through_mboxrd() {
        let mails: Vec<&[u8]> = vec![b"Subject: a\n\nFrom x\n>From y\n", b"Subject: b\n\nno newline at end"];
        let mut out = Vec::new();
        for m in &mails {
            write_mboxrd(&mut out, m);
        }
        let back = split(&out);
        assert_eq!(back[0], mails[0]);
        assert_eq!(back[1], b"Subject: b\n\nno newline at end\n");
    }

    #[test]
    fn empty_and_separator_only() {
        assert!(split(b"").is_empty());
        assert!(split(b"no separator at all\n").is_empty());
        assert_eq!(split(b"From x\n"), vec![Vec::<u8>::new()]);
    }
}
