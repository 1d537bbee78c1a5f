//! Fused relational kernels: an expression IR ([`ir`]) and the code generators
//! that turn one [`Program`] into one kernel — WGSL ([`wgsl`]) for wgpu and
//! CUDA C ([`cuda`]) for NVRTC — cached by the program's fingerprint.
//!
//! The host side of a launch is backend-neutral: [`ColumnData`] describes the
//! input columns as raw little-endian values plus Arrow validity bitmaps, and
//! [`FusedOutput`] carries the compacted result back.

pub mod cuda;
pub mod dialect;
pub mod emit;
mod expr_code;
pub mod fuzz;
pub mod ir;
pub mod numbering;
pub mod wgsl;

pub use ir::{
    BinOp, BlockTopK, Expr, MAX_GROUPS, MAX_TOPK, Program, Reduce, ReduceOp, Ty, UnOp, Value,
};

/// How a launch of a grouped program folds its reductions per group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupFold {
    /// Per workgroup over tiles of rows, a tree per group present in the
    /// tile (at most [`MAX_GROUPS`] groups a launch): deterministic, and
    /// fastest for few groups, where atomics on one accumulator would
    /// serialize.
    Tiles,
    /// One thread per row adds into its group's accumulators with 32-bit
    /// atomics: any number of groups. Integer sums, minima and maxima are
    /// exact; float sums exist on CUDA only (f64 atomics) and add in an
    /// unspecified order.
    Atomics,
}

/// One input column of a fused launch, in the device layout of its [`Ty`]:
/// 4 or 8 bytes per value (booleans as one 32-bit word each).
#[derive(Debug, Clone, Copy)]
pub struct ColumnData<'a> {
    pub ty: Ty,
    /// `rows * ty.width()` bytes, little-endian.
    pub values: &'a [u8],
    /// Arrow validity bits of the rows, bit `i % 32` of word `i / 32` for row
    /// `i`; `None` when no row is NULL.
    pub validity: Option<&'a [u32]>,
}

/// One output column of a fused launch.
#[derive(Debug, Clone, PartialEq)]
pub struct OutColumn {
    pub ty: Ty,
    /// `rows * ty.width() / 4` words, little-endian.
    pub values: Vec<u32>,
    /// One word per row: 1 when the value is valid.
    pub valid: Vec<u32>,
}

/// What one fused launch returns.
#[derive(Debug, Clone, Default)]
pub struct FusedOutput {
    /// The kernel met a row it cannot compute as the CPU would (an integer
    /// division by zero, a decimal overflow, ...); nothing else is set, and
    /// the caller must evaluate the batch on the CPU.
    pub needs_cpu: bool,
    /// For each output row, the input row it came from (ascending).
    pub indices: Vec<u32>,
    pub columns: Vec<OutColumn>,
    /// For a program of reductions, each one's result over the kept rows of
    /// each group: reduction `r` of group `g` at `g * reductions + r`.
    pub reduced: Vec<Reduced>,
    /// For a program of reductions, the kept rows of each group.
    pub group_rows: Vec<u64>,
    /// Bytes copied host → device and device → host.
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// The kernels' own time on the device (timestamps around the compute
    /// pass, CUDA events around the launches), where the device reports it.
    pub kernel_ns: Option<u64>,
}

/// The result of one reduction over a launch's kept rows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reduced {
    /// Kept rows whose argument was not NULL.
    pub nonnull: u64,
    /// Integer and decimal sums (exact), minima and maxima; `None` when no
    /// value was folded or the fold is in floats.
    pub int: Option<i128>,
    /// Float sums.
    pub float: Option<f64>,
}

impl Reduced {
    /// Folds another partial result of the same reduction into this one.
    pub fn merge(&mut self, op: ReduceOp, other: &Reduced) {
        self.nonnull += other.nonnull;
        self.int = match (self.int, other.int) {
            (Some(a), Some(b)) => Some(match op {
                ReduceOp::Min => a.min(b),
                ReduceOp::Max => a.max(b),
                _ => a + b,
            }),
            (a, b) => a.or(b),
        };
        self.float = match (self.float, other.float) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }
}

impl FusedOutput {
    pub fn rows(&self) -> usize {
        self.indices.len()
    }
}

/// The result of launching a program over no rows.
pub fn empty_output(program: &Program, groups: usize) -> FusedOutput {
    FusedOutput {
        columns: program
            .outputs
            .iter()
            .map(|e| OutColumn {
                ty: e.ty(),
                values: Vec::new(),
                valid: Vec::new(),
            })
            .collect(),
        reduced: vec![Reduced::default(); groups * program.reduce.len()],
        group_rows: vec![0; if program.reduce.is_empty() { 0 } else { groups }],
        ..FusedOutput::default()
    }
}

/// Where one launch's inputs and outputs live in the kernel's word buffers,
/// as the generated modules of every dialect read them (see [`wgsl`]).
pub struct Layout<'a> {
    /// The `params` words: row count, input offsets, output offsets.
    pub params: Vec<u32>,
    /// Input bytes and the word offset each goes to in `data`.
    pub placed: Vec<(usize, &'a [u8])>,
    /// Words of `data`.
    pub data_words: usize,
    /// Per output: (values offset, words per value, validity offset).
    regions: Vec<(usize, usize, usize)>,
    index_region: usize,
    /// Words of `outw`.
    pub out_words: usize,
    pub rows: usize,
    /// For a program of reductions: (workgroups, groups); each workgroup
    /// leaves one partial per group and reduction (no workgroups: one
    /// accumulator per group, [`GroupFold::Atomics`]).
    reduce_slots: Option<(usize, usize)>,
    fold: GroupFold,
}

/// Words of one group's accumulator of `r` in a [`GroupFold::Atomics`]
/// launch: a 96-bit integer sum, an f64 sum, or a 64-bit order key.
fn atomic_words(r: &Reduce) -> usize {
    match r.op {
        ReduceOp::Count => 0,
        ReduceOp::Sum if !r.is_float() => 3,
        _ => 2,
    }
}

/// The most rows one launch of `program` takes when its input and output
/// buffers may each hold `limit_bytes`.
pub fn max_launch_rows(program: &Program, limit_bytes: usize) -> usize {
    let in_bytes: usize = program
        .inputs
        .iter()
        .map(|t| t.width() + 1)
        .sum::<usize>()
        .max(1);
    // Rows: each output value, its validity word and the row index. A
    // program of reductions: per group (at most one a row) its accumulators
    // and counts under the atomic fold, and its row count.
    let out_bytes: usize = if program.reduce.is_empty() {
        program
            .outputs
            .iter()
            .map(|e| e.ty().width() + 4)
            .sum::<usize>()
            + 4
    } else {
        4 * (1 + program
            .reduce
            .iter()
            .map(|r| atomic_words(r) + 2)
            .sum::<usize>())
    };
    (limit_bytes / in_bytes)
        .min(limit_bytes / out_bytes)
        .min(1 << 24)
        .max(wgsl::BLOCK as usize)
}

/// `params` value marking a column without NULLs.
pub const NO_VALIDITY: u32 = u32::MAX;

/// `params` (the row count, a word for the caller, then per input its
/// value and validity offsets), the input bytes with the word offset each
/// goes to in `data`, and the words of `data`: the input half of every
/// generated module's layout.
#[allow(clippy::type_complexity)]
pub fn place_inputs<'a>(
    types: &[Ty],
    used: &[bool],
    rows: usize,
    inputs: &[Option<ColumnData<'a>>],
) -> crate::Result<(Vec<u32>, Vec<(usize, &'a [u8])>, usize)> {
    let invalid = |detail: String| crate::KernelError::InvalidInput {
        kernel: "fused",
        detail,
    };
    if inputs.len() != types.len() {
        return Err(invalid(format!(
            "{} input columns for a program of {}",
            inputs.len(),
            types.len()
        )));
    }
    let mut params: Vec<u32> = vec![rows as u32, 0];
    let mut words = 0usize;
    let mut placed: Vec<(usize, &'a [u8])> = Vec::new();
    for (c, (input, ty)) in inputs.iter().zip(types).enumerate() {
        let used = used.get(c).copied().unwrap_or(false);
        match input {
            Some(col) if used => {
                if col.ty != *ty || col.values.len() != rows * ty.width() {
                    return Err(invalid(format!(
                        "input {c}: {} bytes of {} for {rows} rows of {ty}",
                        col.values.len(),
                        col.ty
                    )));
                }
                params.push(words as u32);
                placed.push((words, col.values));
                words += col.values.len() / 4;
                match col.validity {
                    Some(bits) if bits.len() >= rows.div_ceil(32) => {
                        let bits = &bits[..rows.div_ceil(32)];
                        params.push(words as u32);
                        placed.push((words, bytemuck::cast_slice(bits)));
                        words += bits.len();
                    }
                    Some(_) => {
                        return Err(invalid(format!(
                            "input {c}: validity shorter than {rows} rows"
                        )));
                    }
                    None => params.push(NO_VALIDITY),
                }
            }
            _ if used => {
                return Err(invalid(format!("input {c} is read but was not given")));
            }
            _ => params.extend([0, NO_VALIDITY]),
        }
    }
    Ok((params, placed, words))
}

impl<'a> Layout<'a> {
    /// Lays out `rows` rows of `inputs` (`None` for a column nothing reads).
    /// `groups` is 1 but for a grouped program of reductions.
    pub fn new(
        program: &Program,
        rows: usize,
        groups: usize,
        fold: GroupFold,
        inputs: &[Option<ColumnData<'a>>],
    ) -> crate::Result<Layout<'a>> {
        let invalid = |detail: String| crate::KernelError::InvalidInput {
            kernel: "fused",
            detail,
        };
        let (mut params, placed, words) =
            place_inputs(&program.inputs, &program.used_inputs(), rows, inputs)?;
        // Output regions: per value `w` words and a validity (or count) word,
        // `n` entries each, then `n` words of row indices (or group rows).
        // Rows: one entry per input row. Reductions: one per workgroup and
        // group, a 64-bit partial and its count.
        let keyed = if program.group.is_some() {
            "with"
        } else {
            "without"
        };
        let (widths, n, reduce_slots): (Vec<usize>, usize, Option<(usize, usize)>) =
            if program.reduce.is_empty() {
                if groups != 1 {
                    return Err(invalid(format!("{groups} groups for a program of rows")));
                }
                let widths = program.outputs.iter().map(|e| e.ty().width() / 4).collect();
                (widths, rows, None)
            } else if fold == GroupFold::Atomics {
                if program.group.is_none() || groups == 0 || groups >= u32::MAX as usize {
                    return Err(invalid(format!(
                        "an atomic fold of {groups} groups for a program {keyed} a group key"
                    )));
                }
                params[1] = groups as u32;
                (
                    program.reduce.iter().map(atomic_words).collect(),
                    groups,
                    Some((0, groups)),
                )
            } else {
                if groups == 0 || groups > MAX_GROUPS || (program.group.is_none() && groups != 1) {
                    return Err(invalid(format!(
                        "{groups} groups for a program {keyed} a group key (1 to {MAX_GROUPS})"
                    )));
                }
                params[1] = groups as u32;
                // Enough workgroups to fill a large GPU, few enough that the
                // partials (workgroups x groups) stay small next to the input.
                let tiles = rows.div_ceil(wgsl::BLOCK as usize).max(1);
                let nw = tiles.min((16384 / groups).max(512));
                (
                    vec![2; program.reduce.len()],
                    nw * groups,
                    Some((nw, groups)),
                )
            };
        let mut out_words = 0usize;
        let mut regions = Vec::new();
        for w in widths {
            // Even offsets: CUDA's f64 atomics need 8-byte alignment.
            out_words += out_words % 2;
            params.push(out_words as u32);
            params.push((out_words + n * w) as u32);
            regions.push((out_words, w, out_words + n * w));
            out_words += n * (w + 1);
        }
        params.push(out_words as u32);
        let index_region = out_words;
        out_words += n;
        if let Some((nw, _)) = reduce_slots {
            params.push(nw as u32);
        }
        Ok(Layout {
            params,
            placed,
            data_words: words,
            regions,
            index_region,
            out_words: out_words.max(1),
            rows,
            reduce_slots,
            fold,
        })
    }

    /// Blocks of [`wgsl::BLOCK`] rows.
    pub fn blocks(&self) -> usize {
        self.rows.div_ceil(wgsl::BLOCK as usize)
    }

    /// Workgroups of the launch: one per block of rows, or for a program of
    /// reductions the (fewer) workgroups that take the blocks in turn.
    pub fn workgroups(&self) -> usize {
        match self.reduce_slots {
            Some((nw, _)) if self.fold == GroupFold::Tiles => nw,
            _ => self.blocks(),
        }
    }

    pub fn fold(&self) -> GroupFold {
        self.fold
    }

    /// The `data` buffer's contents, assembled on the host.
    pub fn data(&self) -> Vec<u32> {
        let mut data = vec![0u32; self.data_words.max(1)];
        for (at, bytes) in &self.placed {
            let words: &[u32] = bytemuck::cast_slice(bytes);
            data[*at..*at + words.len()].copy_from_slice(words);
        }
        data
    }

    /// The (offset, length) word ranges of `outw` holding `kept` rows, in
    /// the order [`Layout::split`] reads them.
    pub fn kept_ranges(&self, kept: usize) -> Vec<(usize, usize)> {
        if self.reduce_slots.is_some() {
            return vec![(0, self.out_words)];
        }
        let mut copies = Vec::new();
        for &(values, w, validity) in &self.regions {
            copies.push((values, kept * w));
            copies.push((validity, kept));
        }
        copies.push((self.index_region, kept));
        copies
    }

    /// Folds the per-workgroup partials of a program of reductions (the
    /// words of [`Layout::kept_ranges`]) into one result per group and
    /// reduction, and the kept rows of each group.
    fn combine(&self, program: &Program, words: &[u32]) -> (Vec<Reduced>, Vec<u64>) {
        let (nw, groups) = self.reduce_slots.unwrap_or((0, 1));
        let word = |i: usize| words.get(i).copied().unwrap_or(0);
        let mut reduced = vec![Reduced::default(); groups * program.reduce.len()];
        let mut group_rows = vec![0u64; groups];
        for (g, n) in group_rows.iter_mut().enumerate() {
            *n = (0..nw)
                .map(|w| u64::from(word(self.index_region + w * groups + g)))
                .sum();
        }
        for (r, (red, &(values, _, counts))) in program.reduce.iter().zip(&self.regions).enumerate()
        {
            for w in 0..nw {
                for g in 0..groups {
                    let slot = w * groups + g;
                    let n = word(counts + slot);
                    if n == 0 {
                        continue;
                    }
                    let bits = u64::from(word(values + 2 * slot))
                        | (u64::from(word(values + 2 * slot + 1)) << 32);
                    let part = Reduced {
                        nonnull: u64::from(n),
                        int: (!red.is_float() && red.op != ReduceOp::Count)
                            .then_some(i128::from(bits as i64)),
                        float: red.is_float().then_some(f64::from_bits(bits)),
                    };
                    reduced[g * program.reduce.len() + r].merge(red.op, &part);
                }
            }
        }
        (reduced, group_rows)
    }

    /// Fills `out` from the words of [`Layout::kept_ranges`], concatenated:
    /// rows (output columns and row indices) or the reductions' results.
    pub fn read_back(&self, program: &Program, kept: usize, words: &[u32], out: &mut FusedOutput) {
        out.bytes_down += (words.len() * 4) as u64;
        if program.reduce.is_empty() {
            let (columns, indices) = self.split(program, kept, words);
            out.columns = columns;
            out.indices = indices;
        } else if self.fold == GroupFold::Atomics {
            (out.reduced, out.group_rows) = self.accumulators(program, words);
        } else {
            (out.reduced, out.group_rows) = self.combine(program, words);
        }
    }

    /// The results of a [`GroupFold::Atomics`] launch: per group its row
    /// count and each reduction's accumulator (see
    /// [`emit::Body::atomic_kernel`]).
    fn accumulators(&self, program: &Program, words: &[u32]) -> (Vec<Reduced>, Vec<u64>) {
        let (_, groups) = self.reduce_slots.unwrap_or((0, 1));
        let word = |i: usize| u64::from(words.get(i).copied().unwrap_or(0));
        let group_rows = (0..groups).map(|g| word(self.index_region + g)).collect();
        let nred = program.reduce.len();
        let mut reduced = vec![Reduced::default(); groups * nred];
        for (r, (red, &(values, _, counts))) in program.reduce.iter().zip(&self.regions).enumerate()
        {
            for g in 0..groups {
                let nonnull = word(counts + g);
                if nonnull == 0 {
                    continue;
                }
                let pair = |at: usize| word(at) | (word(at + 1) << 32);
                let (int, float) = match red.op {
                    ReduceOp::Count => (None, None),
                    ReduceOp::Sum if red.is_float() => {
                        (None, Some(f64::from_bits(pair(values + 2 * g))))
                    }
                    ReduceOp::Sum => {
                        let at = values + 3 * g;
                        let bits = u128::from(pair(at)) | (u128::from(word(at + 2)) << 64);
                        // Sign-extend from bit 95.
                        (Some(((bits << 32) as i128) >> 32), None)
                    }
                    ReduceOp::Min | ReduceOp::Max => {
                        let mut key = pair(values + 2 * g);
                        if red.op == ReduceOp::Min {
                            key = !key;
                        }
                        (Some(i128::from((key ^ (1 << 63)) as i64)), None)
                    }
                };
                reduced[g * nred + r] = Reduced {
                    nonnull,
                    int,
                    float,
                };
            }
        }
        (reduced, group_rows)
    }

    /// Splits the words of [`Layout::kept_ranges`], concatenated, into
    /// output columns and row indices.
    fn split(&self, program: &Program, kept: usize, words: &[u32]) -> (Vec<OutColumn>, Vec<u32>) {
        let mut rest = words;
        let mut take = |n: usize| {
            let (head, tail) = rest.split_at(n.min(rest.len()));
            rest = tail;
            head.to_vec()
        };
        let mut columns = Vec::new();
        for (e, &(_, w, _)) in program.outputs.iter().zip(&self.regions) {
            let values = take(kept * w);
            let valid = take(kept);
            columns.push(OutColumn {
                ty: e.ty(),
                values,
                valid,
            });
        }
        let indices = take(kept);
        (columns, indices)
    }
}
