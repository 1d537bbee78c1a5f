//! Token-aware chunking (issue 19, §1): a text cut into spans of at most
//! `max_tokens` tokens of a model's tokenizer, each ending, in order of
//! preference, at a paragraph break, a line break, a sentence end, a word
//! boundary — and only then between two tokens of one word — with
//! `overlap` tokens of the previous span repeated, in whole words where
//! they fit. The strategy is the recursive one of LangChain's
//! `RecursiveCharacterTextSplitter` and of the `text-splitter` crate, over
//! token offsets: the text is tokenized once, and a span ends at the best
//! boundary among the `max_tokens` tokens from its start (the last one of
//! the best kind), so spans are packed as full as their boundaries allow.
//!
//! A span starts at its first token and ends at its last (whitespace
//! around it is not part of it). Its token count is the tokens of the
//! whole text inside it; where a span starts or ends inside a word, the
//! tokenizer may cut the span's own text differently, so that text is
//! tokenized again and the span shortened until it fits.

/// One chunk: byte offsets into the text (`start..end`) and its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub tokens: usize,
}

/// The kinds of boundary between two tokens, the best last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Break {
    /// Inside a word: between two tokens with no space or punctuation.
    Token,
    Word,
    Sentence,
    Line,
    Paragraph,
}

/// Characters that end a sentence when a space (or nothing, in scripts
/// written without spaces) follows.
const SENTENCE_ENDS: &[char] = &['.', '!', '?', '…', '。', '！', '？', '؟', '।'];

/// The boundary between tokens `prev` and `next` (byte offsets) of `text`.
fn boundary(text: &str, prev: (usize, usize), next: (usize, usize)) -> Break {
    let gap = text.get(prev.1..next.0).unwrap_or("");
    let newlines = gap.matches('\n').count();
    if newlines >= 2 {
        return Break::Paragraph;
    }
    if newlines == 1 {
        return Break::Line;
    }
    let before = text.get(prev.0..prev.1).and_then(|t| t.chars().last());
    let spaced = gap.chars().any(char::is_whitespace);
    match before {
        // A sentence end: followed by a space, or a full stop of a script
        // written without spaces.
        Some(c) if SENTENCE_ENDS.contains(&c) && (spaced || UNSPACED_ENDS.contains(&c)) => {
            Break::Sentence
        }
        _ if spaced => Break::Word,
        // No space: inside a word ("model's", "state-of-the-art", "3.14",
        // a word and the comma after it).
        _ => Break::Token,
    }
}

/// Sentence ends of scripts written without spaces between sentences.
const UNSPACED_ENDS: &[char] = &['。', '！', '？'];

/// Cuts `text`, tokenized as `tokens` (the byte offsets of each token, in
/// order), into spans of at most `max_tokens` tokens overlapping by up to
/// `overlap` (less than `max_tokens`). `count` tokenizes a span's text on
/// its own: it is asked only of spans that start or end inside a word.
pub fn spans(
    text: &str,
    tokens: &[(usize, usize)],
    max_tokens: usize,
    overlap: usize,
    count: &mut dyn FnMut(&str) -> usize,
) -> Vec<Span> {
    let units: Vec<(usize, usize)> = (0..tokens.len()).map(|i| (i, i + 1)).collect();
    weighted_spans(text, tokens, &units, max_tokens, overlap, count)
}

/// Cuts `text` into spans of at most `max_chars` characters (Unicode code
/// points, from a span's first non-space character to its last)
/// overlapping by up to `overlap` characters, with the same preference of
/// boundaries as [`spans`]; a span's `tokens` is its characters.
pub fn char_spans(text: &str, max_chars: usize, overlap: usize) -> Vec<Span> {
    let mut pieces = Vec::new();
    let mut units = Vec::new();
    for (index, (byte, c)) in text.char_indices().enumerate() {
        if !c.is_whitespace() {
            pieces.push((byte, byte + c.len_utf8()));
            units.push((index, index + 1));
        }
    }
    let mut count = |span: &str| span.chars().count();
    weighted_spans(text, &pieces, &units, max_chars, overlap, &mut count)
}

/// [`spans`] over pieces of `text` whose sizes are counted in units:
/// piece `i` takes units `units[i].0..units[i].1` (increasing), and a span
/// of pieces `i..k` is `units[k - 1].1 - units[i].0` units.
fn weighted_spans(
    text: &str,
    tokens: &[(usize, usize)],
    units: &[(usize, usize)],
    max_tokens: usize,
    overlap: usize,
    count: &mut dyn FnMut(&str) -> usize,
) -> Vec<Span> {
    let n = tokens.len();
    let max_tokens = max_tokens.max(1);
    let overlap = overlap.min(max_tokens - 1);
    // The end of the longest span from piece `i` (at least one piece).
    let limit_from = |i: usize| -> usize {
        let fits = units[i..].partition_point(|u| u.1 - units[i].0 <= max_tokens);
        (i + fits.max(1)).min(n)
    };
    let size = |i: usize, k: usize| units[k - 1].1 - units[i].0;
    // The boundary before token k (0 < k < n).
    let at = |k: usize| boundary(text, tokens[k - 1], tokens[k]);
    let mut out = Vec::new();
    let mut i = 0;
    let mut start_kind = Break::Paragraph;
    // Where the last span ended: the next one ends past it (its overlap is
    // no place to end).
    let mut last_end = 0;
    // Whether the text has word boundaries at all.
    let spaced = (1..n).any(|j| at(j) >= Break::Word);
    while i < n {
        let limit = limit_from(i);
        let first = (i + 1).max(last_end + 1).min(limit);
        let mut k = if limit == n {
            n
        } else {
            // The last boundary of the best kind in the window.
            let mut best = first;
            for k in first..=limit {
                if at(k) >= at(best) {
                    best = k;
                }
            }
            best
        };
        // A span cut inside a word is tokenized again, and shortened while
        // its own tokens are too many.
        while k > first {
            let end_kind = if k == n { Break::Paragraph } else { at(k) };
            if start_kind != Break::Token && end_kind != Break::Token {
                break;
            }
            let span = text.get(tokens[i].0..tokens[k - 1].1).unwrap_or("");
            if count(span) <= max_tokens {
                break;
            }
            k -= 1;
        }
        out.push(Span {
            start: tokens[i].0,
            end: tokens[k - 1].1.max(tokens[i].0),
            tokens: size(i, k),
        });
        if k == n {
            break;
        }
        last_end = k;
        // The next span repeats the last `overlap` tokens, from the first
        // word boundary among them from which the next span can still end
        // at a word boundary (where it could without overlap); none, it repeats
        // nothing rather than start inside a word — unless the text has no
        // word boundaries at all (a script written without spaces).
        let lowest = (i + 1..k).find(|&j| size(j, k) <= overlap).unwrap_or(k);
        // The best boundary a span from token `start` can end at past `k`.
        let reach = |start: usize| -> Break {
            let limit = limit_from(start);
            if limit == n {
                return Break::Paragraph;
            }
            (k + 1..=limit).map(at).max().unwrap_or(Break::Token)
        };
        let next = if overlap == 0 || lowest >= k {
            k
        } else if spaced {
            // A word boundary at least, where one is in reach at all.
            let goal = reach(k).min(Break::Word);
            (lowest..k)
                .filter(|&j| at(j) >= Break::Word)
                .find(|&j| reach(j) >= goal)
                .unwrap_or(k)
        } else {
            lowest
        };
        start_kind = at(next);
        i = next;
    }
    out
}

/// The character offsets of the byte offsets `bytes` of `text` (each on a
/// character boundary), in their order.
pub fn char_offsets(text: &str, bytes: &[usize]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..bytes.len()).collect();
    order.sort_by_key(|&i| bytes[i]);
    let mut out = vec![0; bytes.len()];
    let mut chars = text.char_indices().enumerate().peekable();
    let mut count = 0;
    for i in order {
        while let Some(&(index, (byte, _))) = chars.peek() {
            if byte >= bytes[i] {
                break;
            }
            count = index + 1;
            chars.next();
        }
        out[i] = count;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whitespace-separated words, and punctuation as tokens of their own:
    /// a stand-in tokenizer.
    fn words(text: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut start = None;
        for (i, c) in text.char_indices() {
            if c.is_alphanumeric() {
                start.get_or_insert(i);
                continue;
            }
            if let Some(s) = start.take() {
                out.push((s, i));
            }
            if !c.is_whitespace() {
                out.push((i, i + c.len_utf8()));
            }
        }
        if let Some(s) = start {
            out.push((s, text.len()));
        }
        out
    }

    fn chunks(text: &str, max: usize, overlap: usize) -> Vec<String> {
        let tokens = words(text);
        spans(text, &tokens, max, overlap, &mut |t| words(t).len())
            .iter()
            .map(|s| text[s.start..s.end].to_string())
            .collect()
    }

    #[test]
    fn paragraphs_then_lines_then_sentences_then_words() {
        let text = "one two three\n\nfour five six\nseven. eight nine ten eleven";
        // A line break outranks a sentence end.
        assert_eq!(
            chunks(text, 7, 0),
            [
                "one two three",
                "four five six",
                "seven. eight nine ten eleven"
            ]
        );
        assert_eq!(
            chunks(text, 4, 0),
            [
                "one two three",
                "four five six",
                "seven.",
                "eight nine ten eleven"
            ]
        );
        assert_eq!(chunks("a b c d e", 2, 0), ["a b", "c d", "e"]);
    }

    #[test]
    fn overlap_repeats_whole_words() {
        assert_eq!(chunks("a b c d e f", 3, 1), ["a b c", "c d e", "e f"]);
        assert_eq!(chunks("a b c d e f", 4, 2), ["a b c d", "c d e f"]);
        // "c,d" is one word of three tokens: repeating "b" would leave the
        // next span no place to end but inside it, so nothing is repeated.
        assert_eq!(chunks("a b c,d e", 3, 1), ["a b", "c,d", "e"]);
        // Ends past the last span's end, not at a break inside its overlap.
        assert_eq!(
            chunks("a b. c d e f g", 4, 2),
            ["a b.", "b. c d", "c d e f", "e f g"]
        );
    }

    #[test]
    fn spans_never_exceed_the_budget_and_cover_every_token() {
        let text = "The quick brown fox, it said. Jumps!\nOver the lazy dog's back; \
                    and then: nothing at all.\n\nA new paragraph here.";
        let tokens = words(text);
        for max in 1..12 {
            for overlap in 0..max {
                let found = spans(text, &tokens, max, overlap, &mut |t| words(t).len());
                assert!(found.iter().all(|s| s.tokens <= max && s.tokens >= 1));
                assert_eq!(found.first().unwrap().start, tokens[0].0);
                assert_eq!(found.last().unwrap().end, tokens.last().unwrap().1);
                // Every token is in a span.
                for t in &tokens {
                    assert!(found.iter().any(|s| s.start <= t.0 && t.1 <= s.end));
                }
                for pair in found.windows(2) {
                    assert!(pair[1].start > pair[0].start);
                    if overlap == 0 {
                        assert!(pair[1].start >= pair[0].end);
                    }
                }
            }
        }
    }

    #[test]
    fn empty_text_has_no_spans_and_offsets_are_characters() {
        assert!(spans("", &[], 4, 0, &mut |_| 0).is_empty());
        assert!(spans("  \n ", &[], 4, 0, &mut |_| 0).is_empty());
        let text = "é ü x";
        assert_eq!(char_offsets(text, &[0, 2, 3, 6, 7]), [0, 1, 2, 4, 5]);
    }

    #[test]
    fn a_span_cut_inside_a_word_is_checked_by_its_own_tokens() {
        // "abcdef" as three tokens of two letters: cut inside the word.
        let text = "abcdef";
        let tokens = [(0, 2), (2, 4), (4, 6)];
        // Its text alone counts one token more than its share.
        let found = spans(text, &tokens, 2, 0, &mut |t| t.len() / 2 + 1);
        assert!(found.iter().all(|s| s.tokens == 1), "{found:?}");
        assert_eq!(found.len(), 3);
    }
}
