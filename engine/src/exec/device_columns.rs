//! Arrow columns to and from the device layout of fused kernels
//! ([`kiln_kernels::codegen`]): which Arrow types a GPU stage can compute
//! on, and the copies between Arrow buffers and device words.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Decimal128Array, PrimitiveArray,
};
use datafusion::arrow::buffer::{BooleanBuffer, NullBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{
    ArrowPrimitiveType, DataType, Date32Type, Date64Type, Float32Type, Float64Type, Int8Type,
    Int16Type, Int32Type, Int64Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use datafusion::common::{Result, internal_err};
use kiln_kernels::codegen::{ColumnData, OutColumn, Ty};

/// The device type that holds values of `dt`, if fused kernels compute on it.
pub fn device_ty(dt: &DataType) -> Option<Ty> {
    Some(match dt {
        DataType::Boolean => Ty::Bool,
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::UInt8
        | DataType::UInt16
        | DataType::Date32 => Ty::I32,
        DataType::UInt32 => Ty::U32,
        DataType::Int64 | DataType::Date64 | DataType::Timestamp(_, _) => Ty::I64,
        DataType::UInt64 => Ty::U64,
        DataType::Float32 => Ty::F32,
        DataType::Float64 => Ty::F64,
        DataType::Decimal128(p, s) if *p <= 38 => Ty::Decimal {
            precision: *p,
            scale: *s,
        },
        _ => return None,
    })
}

/// One Arrow column converted to the device layout.
pub struct HostColumn {
    pub ty: Ty,
    values: Vec<u8>,
    validity: Option<Vec<u32>>,
}

impl HostColumn {
    /// This column as the program's input type `want`: an unsigned 64-bit
    /// column (a count state) is taken as signed when no valid value
    /// reaches 2^63; `None` when it cannot be.
    pub fn as_input(self, want: Ty) -> Option<HostColumn> {
        if self.ty == want {
            return Some(self);
        }
        if (self.ty, want) != (Ty::U64, Ty::I64) {
            return None;
        }
        let valid = |i: usize| {
            self.validity
                .as_ref()
                .is_none_or(|bits| bits[i / 32] >> (i % 32) & 1 == 1)
        };
        let fits = self
            .values
            .chunks_exact(8)
            .enumerate()
            .all(|(i, v)| v[7] < 0x80 || !valid(i));
        fits.then_some(HostColumn { ty: want, ..self })
    }

    pub fn data(&self) -> ColumnData<'_> {
        ColumnData {
            ty: self.ty,
            values: &self.values,
            validity: self.validity.as_deref(),
        }
    }
}

/// The values of a primitive array, each mapped to its device word(s).
fn le<T: ArrowPrimitiveType, W: bytemuck::Pod>(
    a: &dyn Array,
    f: impl Fn(T::Native) -> W,
) -> Vec<u8> {
    let words: Vec<W> = a
        .as_primitive::<T>()
        .values()
        .iter()
        .map(|v| f(*v))
        .collect();
    bytemuck::cast_slice::<W, u8>(&words).to_vec()
}

/// Converts `array` for upload, or `None` when a value does not fit the
/// device type (a decimal beyond `i64`): the batch then runs on the CPU.
pub fn to_device(array: &dyn Array) -> Result<Option<HostColumn>> {
    let Some(ty) = device_ty(array.data_type()) else {
        return internal_err!("no device type for {}", array.data_type());
    };
    let values: Vec<u8> = match array.data_type() {
        DataType::Boolean => bytemuck::cast_slice::<u32, u8>(
            &array
                .as_boolean()
                .values()
                .iter()
                .map(u32::from)
                .collect::<Vec<_>>(),
        )
        .to_vec(),
        DataType::Int8 => le::<Int8Type, i32>(array, i32::from),
        DataType::Int16 => le::<Int16Type, i32>(array, i32::from),
        DataType::UInt8 => le::<UInt8Type, i32>(array, i32::from),
        DataType::UInt16 => le::<UInt16Type, i32>(array, i32::from),
        DataType::Int32 => le::<Int32Type, _>(array, |v| v),
        DataType::Date32 => le::<Date32Type, _>(array, |v| v),
        DataType::UInt32 => le::<UInt32Type, _>(array, |v| v),
        DataType::Int64 => le::<Int64Type, _>(array, |v| v),
        DataType::Date64 => le::<Date64Type, _>(array, |v| v),
        DataType::Timestamp(unit, _) => match unit {
            TimeUnit::Second => le::<TimestampSecondType, _>(array, |v| v),
            TimeUnit::Millisecond => le::<TimestampMillisecondType, _>(array, |v| v),
            TimeUnit::Microsecond => le::<TimestampMicrosecondType, _>(array, |v| v),
            TimeUnit::Nanosecond => le::<TimestampNanosecondType, _>(array, |v| v),
        },
        DataType::UInt64 => le::<UInt64Type, _>(array, |v| v),
        DataType::Float32 => le::<Float32Type, _>(array, |v| v),
        DataType::Float64 => le::<Float64Type, _>(array, |v| v),
        DataType::Decimal128(_, _) => {
            let a = array.as_primitive::<datafusion::arrow::datatypes::Decimal128Type>();
            let mut out = Vec::with_capacity(a.len() * 8);
            for (i, v) in a.values().iter().enumerate() {
                match i64::try_from(*v) {
                    Ok(v) => out.extend_from_slice(&v.to_le_bytes()),
                    // A NULL slot may hold anything; only a valid value
                    // that does not fit sends the batch to the CPU.
                    Err(_) if a.is_null(i) => out.extend_from_slice(&0i64.to_le_bytes()),
                    Err(_) => return Ok(None),
                }
            }
            out
        }
        other => return internal_err!("no device conversion for {other}"),
    };
    let validity = array.logical_nulls().map(|n| validity_words(n.inner()));
    Ok(Some(HostColumn {
        ty,
        values,
        validity,
    }))
}

/// A string or binary view column whose values are all inline (at most 12
/// bytes) as two 64-bit device columns, the low and high words of each
/// value's view with the bytes past its length cleared: equal words for
/// equal values, so the device can number them as integer keys. `None` for
/// a longer value or another type.
pub fn inline_view_words(array: &dyn Array) -> Option<[HostColumn; 2]> {
    let views: &[u128] = match array.data_type() {
        DataType::Utf8View => array.as_string_view_opt()?.views(),
        DataType::BinaryView => array.as_binary_view_opt()?.views(),
        _ => return None,
    };
    if views.iter().any(|v| (*v as u32) > 12) {
        return None;
    }
    let validity = array.logical_nulls().map(|n| validity_words(n.inner()));
    let mut lo = Vec::with_capacity(views.len() * 8);
    let mut hi = Vec::with_capacity(views.len() * 8);
    for v in views {
        let k = super::group_keys::inline_key(*v);
        lo.extend_from_slice(&(k as u64).to_le_bytes());
        hi.extend_from_slice(&((k >> 64) as u64).to_le_bytes());
    }
    Some([
        HostColumn {
            ty: Ty::U64,
            values: lo,
            validity: validity.clone(),
        },
        HostColumn {
            ty: Ty::U64,
            values: hi,
            validity,
        },
    ])
}

/// Arrow validity bits re-based to bit 0 of word 0.
fn validity_words(bits: &BooleanBuffer) -> Vec<u32> {
    let chunks = bits.bit_chunks();
    let mut out = Vec::with_capacity(bits.len().div_ceil(32));
    for w in chunks.iter_padded() {
        out.push(w as u32);
        out.push((w >> 32) as u32);
    }
    out.truncate(bits.len().div_ceil(32));
    out
}

fn nulls(valid: &[u32]) -> Option<NullBuffer> {
    if valid.iter().all(|v| *v == 1) {
        return None;
    }
    Some(NullBuffer::new(valid.iter().map(|v| *v == 1).collect()))
}

fn words64(values: &[u32]) -> Vec<u64> {
    values
        .chunks_exact(2)
        .map(|w| u64::from(w[0]) | (u64::from(w[1]) << 32))
        .collect()
}

fn primitive<T: ArrowPrimitiveType>(values: Vec<T::Native>, valid: &[u32]) -> ArrayRef {
    Arc::new(PrimitiveArray::<T>::new(
        ScalarBuffer::from(values),
        nulls(valid),
    ))
}

/// Builds the Arrow array of type `dt` from a kernel's output column,
/// taking its buffers.
pub fn from_device(out: OutColumn, dt: &DataType) -> Result<ArrayRef> {
    let OutColumn { ty, values, valid } = out;
    let valid = &valid;
    let v64 = || words64(&values);
    Ok(match (ty, dt) {
        (Ty::Bool, DataType::Boolean) => Arc::new(BooleanArray::new(
            values.iter().map(|v| *v != 0).collect(),
            nulls(valid),
        )),
        (Ty::I32, DataType::Int32) => {
            primitive::<Int32Type>(values.iter().map(|v| *v as i32).collect(), valid)
        }
        (Ty::I32, DataType::Date32) => {
            primitive::<Date32Type>(values.iter().map(|v| *v as i32).collect(), valid)
        }
        (Ty::U32, DataType::UInt32) => primitive::<UInt32Type>(values, valid),
        (Ty::F32, DataType::Float32) => {
            primitive::<Float32Type>(values.iter().map(|v| f32::from_bits(*v)).collect(), valid)
        }
        (Ty::I64, DataType::Int64) => {
            primitive::<Int64Type>(v64().into_iter().map(|v| v as i64).collect(), valid)
        }
        (Ty::I64, DataType::Date64) => {
            primitive::<Date64Type>(v64().into_iter().map(|v| v as i64).collect(), valid)
        }
        (Ty::I64, DataType::Timestamp(unit, tz)) => {
            let values: Vec<i64> = v64().into_iter().map(|v| v as i64).collect();
            let array: ArrayRef = match unit {
                TimeUnit::Second => primitive::<TimestampSecondType>(values, valid),
                TimeUnit::Millisecond => primitive::<TimestampMillisecondType>(values, valid),
                TimeUnit::Microsecond => primitive::<TimestampMicrosecondType>(values, valid),
                TimeUnit::Nanosecond => primitive::<TimestampNanosecondType>(values, valid),
            };
            datafusion::arrow::compute::cast(&array, &DataType::Timestamp(*unit, tz.clone()))?
        }
        (Ty::U64, DataType::UInt64) => primitive::<UInt64Type>(v64(), valid),
        (Ty::F64, DataType::Float64) => {
            primitive::<Float64Type>(v64().into_iter().map(f64::from_bits).collect(), valid)
        }
        (Ty::Decimal { .. }, DataType::Decimal128(p, s)) => Arc::new(
            Decimal128Array::new(
                ScalarBuffer::from(
                    v64()
                        .into_iter()
                        .map(|v| i128::from(v as i64))
                        .collect::<Vec<_>>(),
                ),
                nulls(valid),
            )
            .with_precision_and_scale(*p, *s)?,
        ),
        (ty, dt) => return internal_err!("kernel output of {ty} cannot become {dt}"),
    })
}
