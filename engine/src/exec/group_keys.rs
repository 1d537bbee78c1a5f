//! Dense group indices for the GROUP BY keys of one device batch.
//!
//! A grouped GPU stage folds its aggregates per group on the device; the
//! host gives every row its group's index, `0..groups`, computed here from
//! the key columns, and after the launch takes each group's key values from
//! the first row that had them. Each key column is coded on its own —
//! integers, dates, timestamps and decimals by their offset from the batch's
//! minimum when the range is small, else (and strings and binaries always)
//! by the order of first appearance; dictionary arrays by their key; NULL is
//! a code of its own, as SQL groups NULLs together — and the codes are then
//! combined. Direct codes (ranges, dictionary keys, products of the keys'
//! domains) are used while they span at most `max_groups` and twice the
//! batch's rows, so that few indices go unused. A batch with more distinct
//! key combinations than `max_groups` gets no index (`None`): the stage
//! aggregates it on the CPU.

use std::hash::Hash;

use ahash::AHashMap;
use datafusion::arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, BinaryArray, BinaryViewArray, LargeBinaryArray,
    LargeStringArray, StringArray, StringViewArray,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Date64Type, Decimal128Type, Int8Type, Int16Type, Int32Type, Int64Type,
    TimeUnit, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};

/// Every row's group and, per group, a row that has its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupIndex {
    /// Per row, its group: below `groups`.
    pub gid: Vec<u32>,
    pub groups: usize,
    /// Per group, the first row in it (`u32::MAX` for an index no row has:
    /// a range code between two present values).
    pub first_row: Vec<u32>,
}

/// Whether a GROUP BY key of this type can be coded by [`group_index`].
pub fn key_type_supported(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Boolean
            | DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Date32
            | DataType::Date64
            | DataType::Timestamp(_, _)
            | DataType::Decimal128(_, _)
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::Dictionary(_, _)
    )
}

/// The group index of `keys` (columns of equal length), or `None` when
/// they hold more than `max_groups` combinations or a type
/// [`key_type_supported`] refuses.
pub fn group_index(keys: &[ArrayRef], max_groups: usize) -> Option<GroupIndex> {
    let rows = keys.first().map_or(0, |k| k.len());
    let max_groups = max_groups.max(1);
    let bound = Bound {
        direct: max_groups.min(rows.saturating_mul(2).max(64)),
        distinct: max_groups,
    };
    let mut gid = vec![0u32; rows];
    let mut groups: usize = 1;
    for key in keys {
        let (codes, domain) = key_codes(key.as_ref(), bound)?;
        let next = groups.checked_mul(domain)?;
        if next <= bound.direct {
            for (g, c) in gid.iter_mut().zip(&codes) {
                *g = *g * domain as u32 + c;
            }
            groups = next;
        } else {
            // The product of the keys' domains is too large for direct
            // indices: number the combinations that occur instead.
            let mut seen: AHashMap<(u32, u32), u32> = AHashMap::new();
            for (g, c) in gid.iter_mut().zip(&codes) {
                let n = seen.len() as u32;
                *g = *seen.entry((*g, *c)).or_insert(n);
                if seen.len() > max_groups {
                    return None;
                }
            }
            groups = seen.len().max(1);
        }
    }
    let mut first_row = vec![u32::MAX; groups];
    for (row, g) in gid.iter().enumerate() {
        let f = &mut first_row[*g as usize];
        if *f == u32::MAX {
            *f = row as u32;
        }
    }
    Some(GroupIndex {
        gid,
        groups,
        first_row,
    })
}

/// How many codes a key may use.
#[derive(Debug, Clone, Copy)]
struct Bound {
    /// The largest domain of direct codes (a range, a dictionary's keys).
    direct: usize,
    /// The most distinct values.
    distinct: usize,
}

/// Per row a code below the returned domain size, equal for equal keys.
fn key_codes(a: &dyn Array, max: Bound) -> Option<(Vec<u32>, usize)> {
    use DataType::*;
    match a.data_type() {
        Boolean => {
            let b = a.as_boolean();
            let codes = (0..a.len())
                .map(|i| {
                    if b.is_null(i) {
                        2
                    } else {
                        u32::from(b.value(i))
                    }
                })
                .collect();
            Some((codes, 3))
        }
        Int8 => primitive::<Int8Type>(a, max),
        Int16 => primitive::<Int16Type>(a, max),
        Int32 => primitive::<Int32Type>(a, max),
        Int64 => primitive::<Int64Type>(a, max),
        UInt8 => primitive::<UInt8Type>(a, max),
        UInt16 => primitive::<UInt16Type>(a, max),
        UInt32 => primitive::<UInt32Type>(a, max),
        UInt64 => primitive::<UInt64Type>(a, max),
        Date32 => primitive::<Date32Type>(a, max),
        Date64 => primitive::<Date64Type>(a, max),
        Timestamp(TimeUnit::Second, _) => primitive::<TimestampSecondType>(a, max),
        Timestamp(TimeUnit::Millisecond, _) => primitive::<TimestampMillisecondType>(a, max),
        Timestamp(TimeUnit::Microsecond, _) => primitive::<TimestampMicrosecondType>(a, max),
        Timestamp(TimeUnit::Nanosecond, _) => primitive::<TimestampNanosecondType>(a, max),
        Decimal128(_, _) => primitive::<Decimal128Type>(a, max),
        Utf8 => by_first_seen(
            a.as_any().downcast_ref::<StringArray>()?.iter(),
            max.distinct,
        ),
        LargeUtf8 => by_first_seen(
            a.as_any().downcast_ref::<LargeStringArray>()?.iter(),
            max.distinct,
        ),
        Utf8View => {
            let v = a.as_any().downcast_ref::<StringViewArray>()?;
            match inline_views(v.views(), v.logical_nulls().as_ref(), max.distinct) {
                Some(codes) => codes,
                None => by_first_seen(v.iter(), max.distinct),
            }
        }
        Binary => by_first_seen(
            a.as_any().downcast_ref::<BinaryArray>()?.iter(),
            max.distinct,
        ),
        LargeBinary => by_first_seen(
            a.as_any().downcast_ref::<LargeBinaryArray>()?.iter(),
            max.distinct,
        ),
        BinaryView => {
            let v = a.as_any().downcast_ref::<BinaryViewArray>()?;
            match inline_views(v.views(), v.logical_nulls().as_ref(), max.distinct) {
                Some(codes) => codes,
                None => by_first_seen(v.iter(), max.distinct),
            }
        }
        Dictionary(_, _) => {
            // The dictionary's own keys; two entries of equal value give
            // two groups, which the final aggregate merges.
            let d = a.as_any_dictionary_opt()?;
            let values = d.values().len();
            let nulls = a.logical_nulls();
            let keys = d.normalized_keys().into_iter().enumerate().map(|(i, k)| {
                if nulls.as_ref().is_some_and(|n| n.is_null(i)) {
                    values as u32
                } else {
                    k as u32
                }
            });
            if values < max.direct {
                Some((keys.collect(), values + 1))
            } else {
                // A dictionary larger than the batch: number the keys used.
                by_first_seen(keys.map(Some), max.distinct)
            }
        }
        _ => None,
    }
}

/// Integer-like keys: the offset from the batch's minimum when the range
/// fits, else numbered by first appearance.
fn primitive<T>(a: &dyn Array, max: Bound) -> Option<(Vec<u32>, usize)>
where
    T: ArrowPrimitiveType,
    T::Native: Into<i128> + Hash + Eq,
{
    let p = a.as_primitive_opt::<T>()?;
    let has_null = p.null_count() > 0;
    let (lo, hi) = match (
        datafusion::arrow::compute::min(p),
        datafusion::arrow::compute::max(p),
    ) {
        (Some(lo), Some(hi)) => (lo.into(), hi.into()),
        // All NULL (or empty): one group.
        _ => return Some((vec![0; a.len()], 1)),
    };
    let range = hi - lo + 1;
    if range + i128::from(has_null) <= max.direct as i128 {
        let null_code = range as u32;
        let values = p.values();
        let codes = if has_null {
            (0..a.len())
                .map(|i| {
                    if p.is_null(i) {
                        null_code
                    } else {
                        (values[i].into() - lo) as u32
                    }
                })
                .collect()
        } else {
            values.iter().map(|v| ((*v).into() - lo) as u32).collect()
        };
        return Some((codes, range as usize + usize::from(has_null)));
    }
    by_first_seen(p.iter(), max.distinct)
}

/// Codes in order of first appearance of a view array whose every value is
/// inline (at most 12 bytes), where the 16-byte view — length and bytes —
/// is the value: no hashing of strings, one multiply per row into an
/// open-addressing table. `None` (use [`by_first_seen`]) when a value is
/// longer; `Some(None)` past `max` distinct values.
fn inline_views(
    views: &[u128],
    nulls: Option<&NullBuffer>,
    max: usize,
) -> Option<Option<(Vec<u32>, usize)>> {
    if views.iter().any(|v| (*v as u32) > 12) {
        return None;
    }
    let mut table = ViewTable::new();
    let codes: Vec<u32> = match nulls.filter(|n| n.null_count() > 0) {
        None => views.iter().map(|v| table.code(inline_key(*v))).collect(),
        Some(nulls) => {
            let mut null_code = None;
            views
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    if nulls.is_null(i) {
                        *null_code.get_or_insert_with(|| table.next_code())
                    } else {
                        table.code(inline_key(*v))
                    }
                })
                .collect()
        }
    };
    // (The table stops growing in memory only at the end: at most a slot
    // pair per row.)
    if table.distinct > max {
        return Some(None);
    }
    Some(Some((codes, table.distinct.max(1))))
}

/// An inline view with the bytes past its length cleared (zero by the
/// format; cleared all the same, so that equal values have equal keys).
pub(crate) fn inline_key(v: u128) -> u128 {
    let len = v as u32;
    if len >= 12 {
        v
    } else {
        v & ((1u128 << (32 + 8 * len)) - 1)
    }
}

/// Codes of inline views, numbered as they first occur.
struct ViewTable {
    /// Open addressing, linear probing; a power of two, at most half full.
    slots: Vec<(u128, u32)>,
    distinct: usize,
}

impl ViewTable {
    /// An empty slot: a length no inline view has.
    const EMPTY: u128 = u128::MAX;

    fn new() -> ViewTable {
        ViewTable {
            slots: vec![(Self::EMPTY, 0); 64],
            distinct: 0,
        }
    }

    fn next_code(&mut self) -> u32 {
        self.distinct += 1;
        self.distinct as u32 - 1
    }

    fn slot_of(k: u128, mask: usize) -> usize {
        let h =
            ((k as u64) ^ ((k >> 64) as u64).rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (h >> 32) as usize & mask
    }

    fn code(&mut self, k: u128) -> u32 {
        let mask = self.slots.len() - 1;
        let mut at = Self::slot_of(k, mask);
        loop {
            let (sk, code) = self.slots[at];
            if sk == k {
                return code;
            }
            if sk == Self::EMPTY {
                let code = self.next_code();
                self.slots[at] = (k, code);
                if 2 * self.distinct > self.slots.len() {
                    self.grow();
                }
                return code;
            }
            at = (at + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let mut bigger = vec![(Self::EMPTY, 0); self.slots.len() * 2];
        let mask = bigger.len() - 1;
        for &(k, code) in self.slots.iter().filter(|s| s.0 != Self::EMPTY) {
            let mut at = Self::slot_of(k, mask);
            while bigger[at].0 != Self::EMPTY {
                at = (at + 1) & mask;
            }
            bigger[at] = (k, code);
        }
        self.slots = bigger;
    }
}

/// Codes in order of first appearance, NULL included; `None` past `max`.
fn by_first_seen<V: Hash + Eq>(
    values: impl Iterator<Item = Option<V>>,
    max: usize,
) -> Option<(Vec<u32>, usize)> {
    let mut seen: AHashMap<Option<V>, u32> = AHashMap::new();
    let mut codes = Vec::with_capacity(values.size_hint().0);
    for v in values {
        let n = seen.len() as u32;
        codes.push(*seen.entry(v).or_insert(n));
        if seen.len() > max {
            return None;
        }
    }
    Some((codes, seen.len().max(1)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{
        DictionaryArray, Int32Array, Int64Array, StringViewArray, UInt8Array,
    };
    use datafusion::arrow::datatypes::Int8Type;

    use super::*;

    /// Rows with equal keys share a group, rows with different keys don't,
    /// and every group's first row has its keys.
    fn check(keys: &[ArrayRef], index: &GroupIndex) {
        let rows = keys[0].len();
        let key_of = |r: usize| -> Vec<String> {
            keys.iter()
                .map(|k| {
                    datafusion::arrow::util::display::array_value_to_string(k, r).unwrap()
                        + if k.is_null(r) { "<null>" } else { "" }
                })
                .collect()
        };
        for r in 0..rows {
            assert!((index.gid[r] as usize) < index.groups);
            let first = index.first_row[index.gid[r] as usize] as usize;
            assert!(first <= r);
            assert_eq!(key_of(first), key_of(r), "row {r}");
        }
        for a in 0..rows {
            for b in 0..rows {
                if key_of(a) == key_of(b) {
                    assert_eq!(index.gid[a], index.gid[b]);
                }
            }
        }
    }

    #[test]
    fn codes_every_supported_kind_of_key() {
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![
            Some(5),
            None,
            Some(7),
            Some(5),
            None,
            Some(6),
        ]));
        let sparse: ArrayRef = Arc::new(Int32Array::from(vec![
            i32::MIN,
            i32::MAX,
            0,
            i32::MIN,
            0,
            i32::MAX,
        ]));
        let strings: ArrayRef = Arc::new(StringViewArray::from(vec![
            Some("a"),
            Some("a long string past twelve bytes"),
            None,
            Some("a"),
            Some("a long string past twelve bytes"),
            Some(""),
        ]));
        let dict: ArrayRef = Arc::new(
            vec![Some("x"), Some("y"), None, Some("x"), Some("y"), Some("x")]
                .into_iter()
                .collect::<DictionaryArray<Int8Type>>(),
        );
        let small: ArrayRef = Arc::new(UInt8Array::from(vec![0, 255, 0, 255, 0, 1]));
        for key in [&ints, &sparse, &strings, &dict, &small] {
            let index = group_index(std::slice::from_ref(key), 64).unwrap();
            check(std::slice::from_ref(key), &index);
        }
        // Range coding: 5, 6, 7 and NULL.
        assert_eq!(group_index(&[Arc::clone(&ints)], 64).unwrap().groups, 4);
        // Several keys, combined directly and (past the bound) numbered.
        let all = [ints, sparse, strings, dict, small];
        for max in [64, 7] {
            let index = group_index(&all, max).unwrap();
            check(&all, &index);
            assert!(index.groups <= max);
        }
        // More combinations than allowed: no index.
        assert!(group_index(&all, 4).is_none());
        // The u8 range 0..=255 is too wide for 16 groups; three values fit.
        assert_eq!(group_index(&all[4..], 16).unwrap().groups, 3);
    }

    #[test]
    fn wide_domains_are_numbered_not_indexed() {
        // 100 values over a range of a million: with room for a million
        // groups, range codes would leave almost every index unused.
        let sparse: ArrayRef = Arc::new(Int64Array::from_iter_values(
            (0..100).map(|i| i * 10_000 % 999_983),
        ));
        let index = group_index(std::slice::from_ref(&sparse), 1 << 20).unwrap();
        check(std::slice::from_ref(&sparse), &index);
        assert_eq!(index.groups, 100);
        // A dictionary of 1,000 values of which a 6-row batch uses three:
        // its keys are numbered, three groups.
        let values: Vec<String> = (0..1000).map(|i| format!("v{i}")).collect();
        let dict: ArrayRef = Arc::new(
            DictionaryArray::<datafusion::arrow::datatypes::Int16Type>::try_new(
                vec![0i16, 500, 999, 0, 500, 0].into(),
                Arc::new(datafusion::arrow::array::StringArray::from(values)),
            )
            .unwrap(),
        );
        let index = group_index(std::slice::from_ref(&dict), 1 << 20).unwrap();
        check(std::slice::from_ref(&dict), &index);
        assert_eq!(index.groups, 3);
        // Every row its own group, with room for them all.
        let ids: ArrayRef = Arc::new(Int64Array::from_iter_values((0..5000).map(|i| i * 7)));
        let index = group_index(std::slice::from_ref(&ids), 5000).unwrap();
        assert_eq!(index.groups, 5000);
        assert!(group_index(std::slice::from_ref(&ids), 4999).is_none());
    }

    #[test]
    fn inline_views_are_numbered_by_their_bytes() {
        use datafusion::arrow::array::BinaryViewArray;
        // Values of every inline length, values equal but for length (a
        // trailing NUL), NULLs, and enough distinct values to grow the table.
        let mut values: Vec<Option<String>> = vec![
            Some(String::new()),
            Some("a".into()),
            Some("a\0".into()),
            Some("twelve bytes".into()),
            None,
            Some("a".into()),
            Some("twelve bytez".into()),
            Some("a\0".into()),
            None,
        ];
        values.extend((0..300).map(|i| Some(format!("k{}", i % 150))));
        let strings: ArrayRef = Arc::new(StringViewArray::from(
            values.iter().map(|v| v.as_deref()).collect::<Vec<_>>(),
        ));
        let index = group_index(std::slice::from_ref(&strings), 1000).unwrap();
        check(std::slice::from_ref(&strings), &index);
        assert_eq!(index.groups, 6 + 150);
        let binary: ArrayRef = Arc::new(BinaryViewArray::from(
            values
                .iter()
                .map(|v| v.as_deref().map(str::as_bytes))
                .collect::<Vec<_>>(),
        ));
        let index = group_index(std::slice::from_ref(&binary), 1000).unwrap();
        check(std::slice::from_ref(&binary), &index);
        assert_eq!(index.groups, 6 + 150);
        // More distinct values than allowed: no index.
        assert!(group_index(std::slice::from_ref(&strings), 100).is_none());
    }

    #[test]
    fn empty_and_all_null_batches_have_one_group() {
        let empty: ArrayRef = Arc::new(Int32Array::from(Vec::<i32>::new()));
        let index = group_index(&[empty], 8).unwrap();
        assert_eq!(index.gid.len(), 0);
        let nulls: ArrayRef = Arc::new(Int32Array::from(vec![None, None]));
        let index = group_index(&[nulls], 8).unwrap();
        assert_eq!((index.groups, index.gid.clone()), (1, vec![0, 0]));
    }
}
