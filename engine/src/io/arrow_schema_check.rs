//! The Arrow schema a Parquet file embeds (`ARROW:schema`), checked before
//! `parquet` hands it to `arrow-ipc`.
//!
//! Writers from the Arrow family store the Arrow schema of what they wrote
//! in the file's key-value metadata: base64 of an IPC message holding a
//! flatbuffer `Schema`. `parquet` (59) base64-decodes it and lets the
//! flatbuffers verifier check the bytes, but `arrow-ipc`'s conversion
//! (`convert.rs`, 59.3.2) then `panic!`s or `unwrap`s on anything the
//! verifier lets through that it has no Arrow type for: an enum value it
//! does not know (a float precision of 4098, a field of type `NONE`), an
//! integer of 24 bits, a decimal of 512, a list without its child, a
//! missing type table, union type ids that repeat. The Parquet fuzz target
//! found six of them (issue 14). [`check_arrow_schema`] walks the same
//! flatbuffer the same way and names what the conversion would panic on,
//! so a file that lies there is an error, not a crash.
//!
//! The walk follows `arrow_ipc::convert::get_data_type` case by case; when
//! `arrow-ipc` is upgraded, re-read that function (the fuzz target's
//! committed crashers under `fuzz/regressions/parquet/arrow-schema-*` replay
//! in every test run and fail if a case is missed).

use datafusion::arrow::datatypes::{DataType, Field, UnionFields};
use datafusion::arrow::ipc::{self, Endianness, Type};

/// The key-value metadata key of the embedded Arrow schema.
pub const ARROW_SCHEMA_KEY: &str = "ARROW:schema";

/// Checks `encoded`, the value of a Parquet file's `ARROW:schema` key. A
/// value `parquet` refuses with an error of its own (not base64, bytes the
/// flatbuffers verifier rejects, a message that is not a schema) passes
/// here: only what would panic is refused.
pub fn check_arrow_schema(encoded: &str) -> Result<(), String> {
    use base64::Engine as _;
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
        return Ok(());
    };
    // As parquet reads it: an IPC continuation marker and length first,
    // or the bare message.
    let message = if bytes.len() > 8 && bytes[0..4] == [255u8; 4] {
        &bytes[8..]
    } else {
        &bytes[..]
    };
    let Ok(message) = ipc::root_as_message(message) else {
        return Ok(());
    };
    let Some(schema) = message.header_as_schema() else {
        return Ok(());
    };
    let Some(fields) = schema.fields() else {
        return Err("its embedded Arrow schema (ARROW:schema) has no field list".to_string());
    };
    let big_endian = schema.endianness() == Endianness::Big;
    for field in fields {
        if big_endian && field.type_type() == Type::Decimal {
            return Err(format!(
                "its embedded Arrow schema (ARROW:schema) has a big-endian decimal {}",
                named(&field)
            ));
        }
        check_field(&field).map_err(|e| format!("its embedded Arrow schema (ARROW:schema) {e}"))?;
    }
    Ok(())
}

fn named(field: &ipc::Field<'_>) -> String {
    format!("field '{}'", field.name().unwrap_or_default())
}

fn check_field(field: &ipc::Field<'_>) -> Result<(), String> {
    if let Some(dictionary) = field.dictionary() {
        let Some(index) = dictionary.indexType() else {
            return Err(format!(
                "gives {} a dictionary without an index type",
                named(field)
            ));
        };
        check_int_width(field, "dictionary index", index.bitWidth())?;
    }
    check_type(field)
}

fn check_int_width(field: &ipc::Field<'_>, what: &str, bits: i32) -> Result<(), String> {
    match bits {
        8 | 16 | 32 | 64 => Ok(()),
        _ => Err(format!(
            "gives {} a {what} of {bits} bits (8, 16, 32 or 64)",
            named(field)
        )),
    }
}

/// What `get_data_type` does with the field's own type (its dictionary
/// aside), refusing where it would panic.
fn check_type(field: &ipc::Field<'_>) -> Result<(), String> {
    let missing = || {
        Err(format!(
            "gives {} the type {:?} without its parameters",
            named(field),
            field.type_type()
        ))
    };
    let unknown = |what: &str, value: String| {
        Err(format!(
            "gives {} a {what} Arrow does not know ({value})",
            named(field)
        ))
    };
    let children = |n: usize| -> Result<(), String> {
        let found = field.children().map_or(0, |c| c.len());
        if found != n {
            return Err(format!(
                "gives {} of type {:?} {found} children (it has {n})",
                named(field),
                field.type_type()
            ));
        }
        field
            .children()
            .into_iter()
            .flatten()
            .try_for_each(|c| check_field(&c))
    };
    match field.type_type() {
        Type::Null
        | Type::Bool
        | Type::Binary
        | Type::BinaryView
        | Type::LargeBinary
        | Type::Utf8
        | Type::Utf8View
        | Type::LargeUtf8 => Ok(()),
        Type::Int => match field.type_as_int() {
            Some(int) => check_int_width(field, "integer", int.bitWidth()),
            None => missing(),
        },
        Type::FixedSizeBinary => match field.type_as_fixed_size_binary() {
            Some(b) if b.byteWidth() < 0 => unknown("byte width", b.byteWidth().to_string()),
            Some(_) => Ok(()),
            None => missing(),
        },
        Type::FloatingPoint => match field.type_as_floating_point() {
            Some(float) if ipc::Precision::ENUM_VALUES.contains(&float.precision()) => Ok(()),
            Some(float) => unknown("float precision", format!("{:?}", float.precision())),
            None => missing(),
        },
        Type::Date => match field.type_as_date() {
            Some(date) if ipc::DateUnit::ENUM_VALUES.contains(&date.unit()) => Ok(()),
            Some(date) => unknown("date unit", format!("{:?}", date.unit())),
            None => missing(),
        },
        Type::Time => match field.type_as_time() {
            Some(time) => match (time.bitWidth(), time.unit()) {
                (32, ipc::TimeUnit::SECOND | ipc::TimeUnit::MILLISECOND)
                | (64, ipc::TimeUnit::MICROSECOND | ipc::TimeUnit::NANOSECOND) => Ok(()),
                (bits, unit) => unknown("time type", format!("{bits} bits, unit {unit:?}")),
            },
            None => missing(),
        },
        Type::Timestamp => match field.type_as_timestamp() {
            Some(ts) if ipc::TimeUnit::ENUM_VALUES.contains(&ts.unit()) => Ok(()),
            Some(ts) => unknown("timestamp unit", format!("{:?}", ts.unit())),
            None => missing(),
        },
        Type::Duration => match field.type_as_duration() {
            Some(d) if ipc::TimeUnit::ENUM_VALUES.contains(&d.unit()) => Ok(()),
            Some(d) => unknown("duration unit", format!("{:?}", d.unit())),
            None => missing(),
        },
        Type::Interval => match field.type_as_interval() {
            Some(i) if ipc::IntervalUnit::ENUM_VALUES.contains(&i.unit()) => Ok(()),
            Some(i) => unknown("interval unit", format!("{:?}", i.unit())),
            None => missing(),
        },
        Type::List | Type::LargeList | Type::ListView | Type::LargeListView => children(1),
        Type::FixedSizeList => match field.type_as_fixed_size_list() {
            // Negative: arrow-ipc takes it, parquet's list reader casts it
            // to a size.
            Some(l) if l.listSize() < 0 => unknown("list size", l.listSize().to_string()),
            Some(_) => children(1),
            None => missing(),
        },
        Type::Map => match field.type_as_map() {
            Some(_) => children(1),
            None => missing(),
        },
        Type::RunEndEncoded => children(2),
        Type::Struct_ => field
            .children()
            .into_iter()
            .flatten()
            .try_for_each(|c| check_field(&c)),
        Type::Decimal => match field.type_as_decimal() {
            Some(d) => {
                if u8::try_from(d.precision()).is_err() || i8::try_from(d.scale()).is_err() {
                    return unknown(
                        "decimal",
                        format!("precision {}, scale {}", d.precision(), d.scale()),
                    );
                }
                match d.bitWidth() {
                    32 | 64 | 128 | 256 => Ok(()),
                    bits => unknown("decimal width", format!("{bits} bits")),
                }
            }
            None => missing(),
        },
        Type::Union => match field.type_as_union() {
            Some(union) => {
                if !ipc::UnionMode::ENUM_VALUES.contains(&union.mode()) {
                    return unknown("union mode", format!("{:?}", union.mode()));
                }
                let n = field.children().map_or(0, |c| c.len());
                // The conversion's own checks, on placeholder fields.
                let placeholders = (0..n).map(|i| Field::new(format!("{i}"), DataType::Null, true));
                let ids = match union.typeIds() {
                    None if n > 128 => Err("more than 128 members".to_string()),
                    None => Ok(()),
                    Some(ids) => UnionFields::try_new(ids.iter().map(|i| i as i8), placeholders)
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                };
                ids.map_err(|e| format!("gives union {} invalid members: {e}", named(field)))?;
                field
                    .children()
                    .into_iter()
                    .flatten()
                    .try_for_each(|c| check_field(&c))
            }
            None => missing(),
        },
        other => unknown("type", format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use datafusion::arrow::datatypes::{Schema, TimeUnit};
    use datafusion::arrow::ipc::writer::{DictionaryTracker, IpcDataGenerator, IpcWriteOptions};
    use std::sync::Arc;

    fn encoded(schema: &Schema) -> String {
        let data = IpcDataGenerator::default().schema_to_bytes_with_dictionary_tracker(
            schema,
            &mut DictionaryTracker::new(true),
            &IpcWriteOptions::default(),
        );
        base64::engine::general_purpose::STANDARD.encode(&data.ipc_message)
    }

    #[test]
    fn schemas_arrow_writes_pass() {
        let item = Arc::new(Field::new("item", DataType::Float32, true));
        let schema = Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("b", DataType::Utf8View, true),
            Field::new("c", DataType::FixedSizeList(Arc::clone(&item), 384), true),
            Field::new("d", DataType::List(item), true),
            Field::new("e", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new("f", DataType::Decimal128(38, 10), true),
            Field::new(
                "g",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                true,
            ),
            Field::new("h", DataType::Time32(TimeUnit::Millisecond), true),
            Field::new("i", DataType::Float16, true),
        ]);
        assert_eq!(check_arrow_schema(&encoded(&schema)), Ok(()));
    }

    #[test]
    fn what_parquet_refuses_itself_passes() {
        assert_eq!(check_arrow_schema("not base64 !"), Ok(()));
        assert_eq!(check_arrow_schema("AAAA"), Ok(()));
    }

    /// Every committed Parquet crasher of this class (found by the fuzz
    /// target, each a panic in `arrow-ipc` before this check) is refused.
    #[test]
    fn the_fuzz_crashers_are_refused() {
        use datafusion::parquet::file::metadata::ParquetMetaDataReader;
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/parquet");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if !name.starts_with("arrow-schema-") {
                continue;
            }
            let file = std::fs::read(&path).unwrap();
            let n = file.len();
            let len = u32::from_le_bytes(file[n - 8..n - 4].try_into().unwrap()) as usize;
            let metadata =
                ParquetMetaDataReader::decode_metadata(&file[n - 8 - len..n - 8]).unwrap();
            let value = metadata
                .file_metadata()
                .key_value_metadata()
                .and_then(|kv| kv.iter().find(|kv| kv.key == ARROW_SCHEMA_KEY))
                .and_then(|kv| kv.value.clone())
                .unwrap();
            let err = check_arrow_schema(&value).unwrap_err();
            assert!(
                err.starts_with("its embedded Arrow schema"),
                "{name}: {err}"
            );
            seen += 1;
        }
        assert!(seen >= 3, "{seen} crashers in {}", dir.display());
    }
}
