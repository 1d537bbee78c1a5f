//! Detecting and masking personal data and secrets in text: patterns found
//! by regular expressions, then checked by the validator of their kind
//! where one exists (Luhn for cards, mod-97 for IBANs, the invalid ranges
//! of US SSNs, octets of IPv4, the grammar of IPv6), and scored as
//! Presidio's pattern recognizers score: a base score per pattern, raised
//! by context words just before the match (and lowered by words that say
//! the number is something else, such as "order" or "invoice"). Findings
//! scoring below [`MIN_SCORE`] are not reported; overlapping findings keep
//! the higher score (then the longer).
//!
//! Offsets are bytes here; the SQL functions report characters.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;
use sha2::{Digest, Sha256};

/// Findings scoring below this are not reported.
pub const MIN_SCORE: f64 = 0.5;

/// What a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PiiType {
    Email,
    Phone,
    CreditCard,
    Iban,
    UsSsn,
    IpAddress,
    UrlCredentials,
    Secret,
}

impl PiiType {
    pub const ALL: [PiiType; 8] = [
        PiiType::Email,
        PiiType::Phone,
        PiiType::CreditCard,
        PiiType::Iban,
        PiiType::UsSsn,
        PiiType::IpAddress,
        PiiType::UrlCredentials,
        PiiType::Secret,
    ];

    /// The name in SQL (`detect_pii`'s `type`, the `types` argument).
    pub fn name(self) -> &'static str {
        match self {
            PiiType::Email => "email",
            PiiType::Phone => "phone",
            PiiType::CreditCard => "credit_card",
            PiiType::Iban => "iban",
            PiiType::UsSsn => "us_ssn",
            PiiType::IpAddress => "ip_address",
            PiiType::UrlCredentials => "url_credentials",
            PiiType::Secret => "secret",
        }
    }

    /// A name, or Presidio's entity name (`EMAIL_ADDRESS`, `PHONE_NUMBER`,
    /// `IBAN_CODE`, ...), in any case.
    pub fn parse(name: &str) -> Option<PiiType> {
        let name = name.trim().to_ascii_lowercase().replace(['-', ' '], "_");
        Some(match name.as_str() {
            "email" | "email_address" => PiiType::Email,
            "phone" | "phone_number" => PiiType::Phone,
            "credit_card" | "card" => PiiType::CreditCard,
            "iban" | "iban_code" => PiiType::Iban,
            "us_ssn" | "ssn" => PiiType::UsSsn,
            "ip_address" | "ip" => PiiType::IpAddress,
            "url_credentials" => PiiType::UrlCredentials,
            "secret" | "secrets" => PiiType::Secret,
            _ => return None,
        })
    }

    /// What `redact` puts in its place.
    fn label(self) -> &'static str {
        match self {
            PiiType::Email => "<EMAIL>",
            PiiType::Phone => "<PHONE>",
            PiiType::CreditCard => "<CREDIT_CARD>",
            PiiType::Iban => "<IBAN>",
            PiiType::UsSsn => "<US_SSN>",
            PiiType::IpAddress => "<IP_ADDRESS>",
            PiiType::UrlCredentials => "<URL_CREDENTIALS>",
            PiiType::Secret => "<SECRET>",
        }
    }

    /// Words just before a finding that make it more likely.
    fn context(self) -> &'static [&'static str] {
        match self {
            PiiType::Email => &["email", "e-mail", "mail", "contact"],
            PiiType::Phone => &[
                "phone", "tel", "mobile", "cell", "call", "fax", "whatsapp", "contact",
            ],
            PiiType::CreditCard => &[
                "card",
                "visa",
                "mastercard",
                "amex",
                "credit",
                "debit",
                "payment",
                "cc",
            ],
            PiiType::Iban => &["iban", "account", "bank", "transfer"],
            PiiType::UsSsn => &["ssn", "social security", "social-security", "ssa"],
            PiiType::IpAddress => &["ip", "address", "host", "server", "client"],
            PiiType::UrlCredentials | PiiType::Secret => &[],
        }
    }
}

impl fmt::Display for PiiType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Words just before a number that say it is not personal data.
const NEGATIVE_CONTEXT: &[&str] = &[
    "order",
    "orders",
    "invoice",
    "tracking",
    "ref",
    "reference",
    "isbn",
    "serial",
    "sku",
    "part no",
    "ticket",
    "version",
    "versions",
    "release",
    "build",
];

/// How far before a finding its context words are looked for (bytes).
const CONTEXT_BYTES: usize = 40;

/// One finding: a kind, byte offsets into the text and a score in (0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Finding {
    pub kind: PiiType,
    pub start: usize,
    pub end: usize,
    pub score: f64,
}

/// What a validator says of a match: the score it adds and how many bytes
/// of the match are the finding (a regular expression takes the longest
/// match, which may run into the next word: the validator shortens it).
type Checked = Option<(f64, usize)>;

/// A pattern: its kind, base score, the capture group that is the finding
/// (0: the whole match), its validator, and whether the characters around
/// it must not continue it (letters, digits, `_`, `:`, `.`).
struct Pattern {
    kind: PiiType,
    regex: Regex,
    score: f64,
    group: usize,
    check: fn(&str) -> Checked,
    bounded: bool,
}

fn always(s: &str) -> Checked {
    Some((0.0, s.len()))
}

fn pattern(
    kind: PiiType,
    regex: &str,
    score: f64,
    group: usize,
    check: fn(&str) -> Checked,
) -> Pattern {
    Pattern {
        kind,
        // The expressions are constants of this file, checked by its tests.
        regex: Regex::new(regex).unwrap_or_else(|e| panic!("PII pattern {regex}: {e}")),
        score,
        group,
        check,
        bounded: false,
    }
}

/// The longest prefix of `s` that `ok` accepts, cutting at the separators
/// `seps` from the end: its length.
fn longest_prefix(s: &str, seps: &[char], ok: impl Fn(&str) -> bool) -> Option<usize> {
    let mut end = s.len();
    loop {
        let prefix = s[..end].trim_end_matches(seps);
        if prefix.is_empty() {
            return None;
        }
        if ok(prefix) {
            return Some(prefix.len());
        }
        end = prefix.rfind(seps)?;
    }
}

static PATTERNS: LazyLock<Vec<Pattern>> = LazyLock::new(|| {
    use PiiType::*;
    vec![
        pattern(
            Email,
            r"(?i)\b[a-z0-9][a-z0-9._%+-]*@(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,24}\b",
            1.0,
            0,
            email,
        ),
        // +CC then groups: E.164 and its common written forms.
        pattern(
            Phone,
            r"\+[1-9]\d{0,2}(?:[ .-]?\(?\d{1,5}\)?){1,6}\b",
            0.7,
            0,
            phone_international,
        ),
        // North American: (415) 555-0132, 415-555-0132, 415.555.0132.
        pattern(
            Phone,
            r"(?:\(\d{3}\)\s?|\b\d{3}[.-])\d{3}[.-]\d{4}\b",
            0.6,
            0,
            always,
        ),
        // National numbers with a trunk 0: 020 7946 0958, 030 12345678, 01 23 45 67 89.
        pattern(
            Phone,
            r"\b0\d{1,4}(?:[ .-]\d{2,8}){1,4}\b",
            0.45,
            0,
            phone_national,
        ),
        pattern(
            CreditCard,
            r"\b\d{4}(?:([ -]?)\d{4}){2}(?:[ -]?\d{1,7})\b|\b\d{4}[ -]?\d{6}[ -]?\d{4,5}\b",
            0.5,
            0,
            credit_card,
        ),
        pattern(
            Iban,
            r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b",
            0.5,
            0,
            iban,
        ),
        pattern(UsSsn, r"\b\d{3}-\d{2}-\d{4}\b", 0.6, 0, ssn),
        pattern(UsSsn, r"\b\d{3} \d{2} \d{4}\b", 0.4, 0, ssn),
        pattern(UsSsn, r"\b\d{9}\b", 0.2, 0, ssn),
        pattern(IpAddress, r"\b(?:\d{1,3}\.){3}\d{1,3}\b", 0.6, 0, ipv4),
        Pattern {
            bounded: true,
            ..pattern(
                IpAddress,
                r"(?i)(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}(?:(?:\d{1,3}\.){3}\d{1,3})?",
                0.6,
                0,
                ipv6,
            )
        },
        pattern(
            UrlCredentials,
            r"(?i)\b[a-z][a-z0-9+.-]*://([^\s:/@]+:[^\s/@]+)@[^\s/?#]+",
            1.0,
            1,
            always,
        ),
        pattern(
            Secret,
            r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b",
            0.95,
            0,
            always,
        ),
        pattern(
            Secret,
            r#"(?i)aws.{0,20}?(?:secret|key)[^\n]{0,20}?[=:"'\s]+([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)"#,
            0.9,
            1,
            always,
        ),
        pattern(
            Secret,
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----",
            1.0,
            0,
            always,
        ),
        pattern(
            Secret,
            r"(?i)\bbearer\s+([a-z0-9\-._~+/]{20,}=*)",
            0.85,
            1,
            always,
        ),
        pattern(
            Secret,
            r"\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{60,90})\b",
            0.95,
            0,
            always,
        ),
        pattern(Secret, r"\bxox[abprs]-[A-Za-z0-9-]{10,}", 0.9, 0, always),
        pattern(
            Secret,
            r"\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}\b",
            0.9,
            0,
            always,
        ),
        pattern(Secret, r"\bAIza[0-9A-Za-z_-]{35}\b", 0.9, 0, always),
        pattern(
            Secret,
            r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}",
            0.85,
            0,
            always,
        ),
        pattern(
            Secret,
            r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{32,}",
            0.8,
            0,
            always,
        ),
        pattern(
            Secret,
            r#"(?i)\b(?:api[_-]?key|secret[_-]?key|access[_-]?token|auth[_-]?token|password|passwd|pwd)\s*[:=]\s*["']?([^\s"',;]{8,})"#,
            0.7,
            1,
            always,
        ),
    ]
});

fn digits(s: &str) -> Vec<u8> {
    s.bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect()
}

fn email(s: &str) -> Checked {
    let (local, domain) = s.split_once('@')?;
    if local.ends_with('.') || local.contains("..") || domain.contains("..") {
        return None;
    }
    Some((0.0, s.len()))
}

/// Phone separators: a number followed by another ("+44 20 7946 0958
/// 2023") is cut back group by group.
const PHONE_SEPARATORS: &[char] = &[' ', '.', '-'];

fn phone_international(s: &str) -> Checked {
    let n = longest_prefix(s, PHONE_SEPARATORS, |p| (8..=15).contains(&digits(p).len()))?;
    Some((0.0, n))
}

fn phone_national(s: &str) -> Checked {
    // Dates (8 digits) and short codes are not phone numbers.
    let n = longest_prefix(s, PHONE_SEPARATORS, |p| (9..=12).contains(&digits(p).len()))?;
    Some((0.0, n))
}

/// The Luhn checksum holds.
pub fn luhn(d: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &x) in d.iter().rev().enumerate() {
        let mut v = x as u32;
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    !d.is_empty() && sum.is_multiple_of(10)
}

/// Issuer prefixes and lengths of the card networks.
fn card_network(d: &[u8]) -> bool {
    let n = d.len();
    let prefix = |k: usize| d.iter().take(k).fold(0u32, |a, &x| a * 10 + x as u32);
    let p2 = prefix(2);
    let p3 = prefix(3);
    let p4 = prefix(4);
    match d.first() {
        Some(4) => matches!(n, 13 | 16 | 19),              // Visa
        Some(5) if (51..=55).contains(&p2) => n == 16,     // Mastercard
        Some(2) if (2221..=2720).contains(&p4) => n == 16, // Mastercard
        Some(3) if p2 == 34 || p2 == 37 => n == 15,        // Amex
        Some(3) if (3528..=3589).contains(&p4) => (16..=19).contains(&n), // JCB
        Some(3) if (300..=305).contains(&p3) || p2 == 36 || p2 == 38 || p2 == 39 => {
            (14..=19).contains(&n) // Diners
        }
        Some(6) if p4 == 6011 || (644..=649).contains(&p3) || p2 == 65 => {
            (16..=19).contains(&n) // Discover
        }
        Some(6) if p2 == 62 => (16..=19).contains(&n), // UnionPay
        _ => false,
    }
}

fn credit_card(s: &str) -> Checked {
    let d = digits(s);
    // Mixed separators ("4111 1111-1111") are not how a card is written.
    let seps: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_digit()).collect();
    if seps.windows(2).any(|w| w[0] != w[1]) {
        return None;
    }
    (card_network(&d) && luhn(&d)).then_some((0.5, s.len()))
}

/// IBAN lengths by country (the SWIFT registry's, for the countries most
/// seen); other countries: 15 to 34 characters.
fn iban_length(country: &str) -> Option<usize> {
    Some(match country {
        "AD" => 24,
        "AT" => 20,
        "BE" => 16,
        "BG" => 22,
        "CH" => 21,
        "CY" => 28,
        "CZ" => 24,
        "DE" => 22,
        "DK" => 18,
        "EE" => 20,
        "ES" => 24,
        "FI" => 18,
        "FR" => 27,
        "GB" => 22,
        "GR" => 27,
        "HR" => 21,
        "HU" => 28,
        "IE" => 22,
        "IS" => 26,
        "IT" => 27,
        "LI" => 21,
        "LT" => 20,
        "LU" => 20,
        "LV" => 21,
        "MC" => 27,
        "MT" => 31,
        "NL" => 18,
        "NO" => 15,
        "PL" => 28,
        "PT" => 25,
        "RO" => 24,
        "SE" => 24,
        "SI" => 19,
        "SK" => 24,
        "SM" => 27,
        "TR" => 26,
        _ => return None,
    })
}

/// The IBAN's mod-97 check (ISO 13616) holds.
pub fn iban_valid(s: &str) -> bool {
    let compact: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let n = compact.len();
    if !(15..=34).contains(&n) {
        return false;
    }
    let country = std::str::from_utf8(&compact[..2]).unwrap_or("");
    if iban_length(country).is_some_and(|len| len != n) {
        return false;
    }
    let mut rem = 0u32;
    for &b in compact[4..].iter().chain(&compact[..4]) {
        let v = match b {
            b'0'..=b'9' => (b - b'0') as u32,
            b'A'..=b'Z' => (b - b'A') as u32 + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

fn iban(s: &str) -> Checked {
    // "BE68 5390 0754 7034 EUR": the currency is not part of it.
    let n = longest_prefix(s, &[' '], iban_valid)?;
    Some((0.5, n))
}

/// A US SSN outside the ranges never issued (area 000, 666, 900–999;
/// group 00; serial 0000) and not a well-known example number.
pub fn ssn_valid(d: &[u8]) -> bool {
    if d.len() != 9 {
        return false;
    }
    let num = |r: std::ops::Range<usize>| d[r].iter().fold(0u32, |a, &x| a * 10 + x as u32);
    let (area, group, serial) = (num(0..3), num(3..5), num(5..9));
    let all_same = d.iter().all(|&x| x == d[0]);
    let sequence = d == [1, 2, 3, 4, 5, 6, 7, 8, 9];
    let examples = [78_051_120u32, 219_099_999];
    !(area == 0
        || area == 666
        || area >= 900
        || group == 0
        || serial == 0
        || all_same
        || sequence
        || examples.contains(&num(0..9)))
}

fn ssn(s: &str) -> Checked {
    ssn_valid(&digits(s)).then_some((0.0, s.len()))
}

fn ipv4(s: &str) -> Checked {
    s.parse::<std::net::Ipv4Addr>().ok().map(|_| (0.0, s.len()))
}

fn ipv6(s: &str) -> Checked {
    // Times (12:30:45) do not parse; "::" alone is no address; "1::2" and
    // "d::" (code: `a[1::2]`, `std::vec`) parse but are not written as
    // addresses: three groups at least, or one of three digits or more,
    // or the loopback "::1".
    let groups: Vec<&str> = s.split(':').filter(|g| !g.is_empty()).collect();
    let written = groups.len() >= 3 || groups.iter().any(|g| g.len() >= 3) || s == "::1";
    if !written {
        return None;
    }
    s.parse::<std::net::Ipv6Addr>().ok().map(|_| (0.0, s.len()))
}

/// The score of a finding of `kind` at `start` with `base`, given the text
/// before it.
fn with_context(text: &str, kind: PiiType, start: usize, base: f64) -> f64 {
    let mut from = start.saturating_sub(CONTEXT_BYTES);
    while !text.is_char_boundary(from) {
        from -= 1;
    }
    let before = text[from..start].to_lowercase();
    let has = |words: &[&str]| {
        words.iter().any(|w| {
            before.match_indices(w).any(|(i, _)| {
                let prev = before[..i].chars().last();
                let next = before[i + w.len()..].chars().next();
                !prev.is_some_and(char::is_alphanumeric) && !next.is_some_and(char::is_alphanumeric)
            })
        })
    };
    let mut score = base;
    if has(kind.context()) {
        score = (score + 0.35).min(1.0);
    }
    if matches!(
        kind,
        PiiType::CreditCard | PiiType::Phone | PiiType::UsSsn | PiiType::IpAddress
    ) && has(NEGATIVE_CONTEXT)
    {
        score -= 0.6;
    }
    score
}

/// The findings in `text` of the kinds in `kinds`, in order, scoring at
/// least [`MIN_SCORE`], without overlaps.
pub fn detect(text: &str, kinds: &[PiiType]) -> Vec<Finding> {
    let mut found = Vec::new();
    for p in PATTERNS.iter().filter(|p| kinds.contains(&p.kind)) {
        for caps in p.regex.captures_iter(text) {
            let Some(m) = caps.get(p.group) else {
                continue;
            };
            let Some((bonus, len)) = (p.check)(m.as_str()) else {
                continue;
            };
            let (start, end) = (m.start(), m.start() + len);
            if p.bounded {
                let continues =
                    |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || "_:.".contains(c));
                if continues(text[..start].chars().last()) || continues(text[end..].chars().next())
                {
                    continue;
                }
            }
            let score = with_context(text, p.kind, start, p.score + bonus).min(1.0);
            if score >= MIN_SCORE {
                found.push(Finding {
                    kind: p.kind,
                    start,
                    end,
                    score,
                });
            }
        }
    }
    // The best of overlapping findings: higher score, then credentials and
    // secrets (an address inside them is part of them), then longer, then
    // first.
    let priority = |k: PiiType| match k {
        PiiType::UrlCredentials => 0,
        PiiType::Secret => 1,
        _ => 2,
    };
    found.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(priority(a.kind).cmp(&priority(b.kind)))
            .then((b.end - b.start).cmp(&(a.end - a.start)))
            .then(a.start.cmp(&b.start))
    });
    let mut kept: Vec<Finding> = Vec::new();
    for f in found {
        if kept.iter().all(|k| f.end <= k.start || f.start >= k.end) {
            kept.push(f);
        }
    }
    kept.sort_by_key(|f| f.start);
    kept
}

/// How `mask_pii` replaces a finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaskMode {
    /// `<EMAIL>`, `<PHONE>`, ...
    Redact,
    /// Characters replaced by `*`, keeping the length, separators and what
    /// identifies nothing (an email's first character and top-level domain,
    /// a card's or IBAN's last four, a phone's last two).
    Mask,
    /// `<EMAIL:16 hex digits>`: SHA-256 of the salt, the kind and the
    /// value: equal values give equal hashes (within one salt).
    Hash { salt: String },
}

impl MaskMode {
    pub fn parse(name: &str, salt: Option<&str>) -> Result<MaskMode, String> {
        match name.to_ascii_lowercase().as_str() {
            "redact" => Ok(MaskMode::Redact),
            "mask" => Ok(MaskMode::Mask),
            "hash" => match salt {
                Some(s) if !s.is_empty() => Ok(MaskMode::Hash {
                    salt: s.to_string(),
                }),
                _ => Err(
                    "mask_pii: mode 'hash' needs a salt: SET kiln.pii_salt = '<secret>' \
                          (the same salt gives the same hashes, so joins on masked values work)"
                        .to_string(),
                ),
            },
            other => Err(format!(
                "mask_pii: mode must be 'redact', 'mask' or 'hash', not '{other}'"
            )),
        }
    }
}

/// `value` masked as `mode` masks a finding of `kind`, appended to `out`.
fn mask_one(kind: PiiType, value: &str, mode: &MaskMode, out: &mut String) {
    match mode {
        MaskMode::Redact => out.push_str(kind.label()),
        MaskMode::Hash { salt } => {
            let mut h = Sha256::new();
            h.update(salt.as_bytes());
            h.update([0]);
            h.update(kind.name().as_bytes());
            h.update([0]);
            h.update(value.as_bytes());
            let digest = h.finalize();
            let label = kind.label();
            out.push_str(&label[..label.len() - 1]);
            out.push(':');
            for b in &digest[..8] {
                out.push_str(&format!("{b:02x}"));
            }
            out.push('>');
        }
        MaskMode::Mask => {
            let chars: Vec<char> = value.chars().collect();
            // Which characters stay: separators, and what identifies nothing.
            let keep_last = |n: usize, chars: &[char]| -> Vec<bool> {
                let mut left = n;
                let mut keep = vec![false; chars.len()];
                for (i, c) in chars.iter().enumerate().rev() {
                    if c.is_ascii_alphanumeric() && left > 0 {
                        keep[i] = true;
                        left -= 1;
                    }
                }
                keep
            };
            let keep: Vec<bool> = match kind {
                PiiType::Email => {
                    let at = chars.iter().position(|&c| c == '@').unwrap_or(0);
                    let dot = chars.iter().rposition(|&c| c == '.').unwrap_or(chars.len());
                    (0..chars.len())
                        .map(|i| i == 0 || i == at || i >= dot)
                        .collect()
                }
                PiiType::CreditCard | PiiType::Iban | PiiType::UsSsn => keep_last(4, &chars),
                PiiType::Phone => keep_last(2, &chars),
                _ => vec![false; chars.len()],
            };
            for (c, k) in chars.iter().zip(keep) {
                let hidden = c.is_alphanumeric()
                    || (matches!(kind, PiiType::Secret | PiiType::UrlCredentials)
                        && !c.is_whitespace());
                if k || !hidden {
                    out.push(*c);
                } else {
                    out.push('*');
                }
            }
        }
    }
}

/// `text` with every finding of `kinds` masked as `mode`.
pub fn mask(text: &str, kinds: &[PiiType], mode: &MaskMode) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for f in detect(text, kinds) {
        out.push_str(&text[at..f.start]);
        mask_one(f.kind, &text[f.start..f.end], mode, &mut out);
        at = f.end;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<(PiiType, &str)> {
        detect(text, &PiiType::ALL)
            .into_iter()
            .map(|f| (f.kind, &text[f.start..f.end]))
            .collect()
    }

    #[test]
    fn patterns_compile() {
        assert!(PATTERNS.len() > 10);
    }

    #[test]
    fn validators() {
        assert!(luhn(&digits("4111 1111 1111 1111")));
        assert!(!luhn(&digits("4111 1111 1111 1112")));
        assert!(iban_valid("GB82 WEST 1234 5698 7654 32"));
        assert!(iban_valid("DE89370400440532013000"));
        assert!(!iban_valid("DE89370400440532013001"));
        assert!(!iban_valid("GB82 WEST 1234 5698 7654"));
        assert!(ssn_valid(&digits("536-22-1234")));
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "912-12-3456",
            "536-00-1234",
            "536-22-0000",
            "078-05-1120",
        ] {
            assert!(!ssn_valid(&digits(bad)), "{bad}");
        }
    }

    #[test]
    fn finds_each_kind_and_skips_lookalikes() {
        let found = kinds(
            "Mail jane.doe@example.co.uk or call +44 20 7946 0958. Card 4111-1111-1111-1111, \
             IBAN GB82 WEST 1234 5698 7654 32, SSN 536-22-1234, host 192.168.10.20, \
             see https://admin:hunter22@db.example.com/x and AKIAIOSFODNN7EXAMPLE.",
        );
        let names: Vec<PiiType> = found.iter().map(|f| f.0).collect();
        assert_eq!(
            names,
            [
                PiiType::Email,
                PiiType::Phone,
                PiiType::CreditCard,
                PiiType::Iban,
                PiiType::UsSsn,
                PiiType::IpAddress,
                PiiType::UrlCredentials,
                PiiType::Secret
            ],
            "{found:?}"
        );
        assert_eq!(found[6].1, "admin:hunter22");
        // A date, an order number that fails Luhn, a version, a time.
        assert!(
            kinds("On 2023-10-12 order 4111 1111 1111 1112 shipped (v1.2.3, at 12:30:45).")
                .is_empty()
        );
    }

    #[test]
    fn masks_in_three_modes() {
        let text = "Write to jane@example.com, card 4111 1111 1111 1111.";
        let all = PiiType::ALL;
        assert_eq!(
            mask(text, &all, &MaskMode::Redact),
            "Write to <EMAIL>, card <CREDIT_CARD>."
        );
        assert_eq!(
            mask(text, &all, &MaskMode::Mask),
            "Write to j***@*******.com, card **** **** **** 1111."
        );
        let salt = MaskMode::Hash { salt: "s1".into() };
        let a = mask("jane@example.com", &all, &salt);
        assert!(
            a.starts_with("<EMAIL:") && a.len() == "<EMAIL:>".len() + 16,
            "{a}"
        );
        assert_eq!(a, mask("jane@example.com", &all, &salt));
        assert_ne!(
            a,
            mask(
                "jane@example.com",
                &all,
                &MaskMode::Hash { salt: "s2".into() }
            )
        );
        assert!(
            MaskMode::parse("hash", None)
                .unwrap_err()
                .contains("kiln.pii_salt")
        );
    }
}
