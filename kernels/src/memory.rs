//! One memory budget per device, and split-and-retry.
//!
//! GPU engines die of out-of-memory. Every device allocation Kiln makes —
//! model weights, encoder activations, stage buffers, numbering tables,
//! search tiles — first reserves its bytes in its device's [`MemoryBudget`];
//! the [`Reservation`] travels with the allocation (see [`Held`]) and gives
//! the bytes back when both are dropped. Buffers that live past one
//! operation (weights, uploaded queries, encoder tensors) hold their own
//! reservation; the short-lived buffers of one launch are reserved together
//! for the launch. Uniform parameter blocks of a few words are not counted.
//!
//! A reservation that does not fit first evicts what can be evicted (model
//! weights no batch is using, see [`Evict`]), then fails with
//! [`KernelError::OutOfMemory`] — as does a real out-of-memory from the
//! driver. Callers do not fail then: [`split_and_retry`] halves the batch
//! and runs the halves, down to a floor, and runs what still does not fit
//! on the CPU. Results never depend on where a piece ran.
//!
//! Failures can be injected on any device, the CPU included, to test that
//! path (`KILN_INJECT_OOM`, read when a device is opened):
//! - `every:N` — every Nth reservation on a device fails;
//! - `p:P` or `p:P,seed:S` — each fails with probability P, drawn from a
//!   generator seeded with S (0 by default), so a run is reproducible.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::error::{KernelError, Result};

/// The variable that injects allocation failures.
pub const INJECT_OOM_VAR: &str = "KILN_INJECT_OOM";

/// The share of a device's memory Kiln's budget takes by default, where the
/// device reports its memory: the rest is left to the driver, the context
/// and other processes.
pub const DEFAULT_DEVICE_FRACTION: f64 = 0.9;

/// When a reservation fails on purpose (`KILN_INJECT_OOM`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Injection {
    /// Every Nth reservation fails (N ≥ 1).
    Every(u64),
    /// Each reservation fails with probability `p`, drawn reproducibly from
    /// `seed` and the reservation's number.
    Probability { p: f64, seed: u64 },
}

impl Injection {
    /// Parses `every:N`, `p:P` or `p:P,seed:S`.
    pub fn parse(value: &str) -> Result<Injection> {
        let bad = || KernelError::InvalidSetting {
            name: INJECT_OOM_VAR,
            value: value.to_string(),
            expected: "every:N (N at least 1), p:P or p:P,seed:S (P between 0 and 1)",
        };
        let mut every = None;
        let mut p = None;
        let mut seed = None;
        for part in value.split(',') {
            let (key, v) = part.split_once(':').ok_or_else(bad)?;
            match key.trim() {
                "every" if every.is_none() => {
                    every = Some(v.trim().parse::<u64>().map_err(|_| bad())?)
                }
                "p" if p.is_none() => p = Some(v.trim().parse::<f64>().map_err(|_| bad())?),
                "seed" if seed.is_none() => {
                    seed = Some(v.trim().parse::<u64>().map_err(|_| bad())?)
                }
                _ => return Err(bad()),
            }
        }
        match (every, p, seed) {
            (Some(n), None, None) if n >= 1 => Ok(Injection::Every(n)),
            (None, Some(p), seed) if (0.0..=1.0).contains(&p) => Ok(Injection::Probability {
                p,
                seed: seed.unwrap_or(0),
            }),
            _ => Err(bad()),
        }
    }

    /// What `KILN_INJECT_OOM` asks for; `None` when it is unset or empty.
    pub fn from_env() -> Result<Option<Injection>> {
        match std::env::var(INJECT_OOM_VAR) {
            Ok(v) if !v.trim().is_empty() => Injection::parse(v.trim()).map(Some),
            _ => Ok(None),
        }
    }

    /// Whether reservation number `n` (from 1) fails.
    fn fails(&self, n: u64) -> bool {
        match *self {
            Injection::Every(every) => n.is_multiple_of(every),
            Injection::Probability { p, seed } => {
                let draw = splitmix64(seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                ((draw >> 11) as f64 / (1u64 << 53) as f64) < p
            }
        }
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Something holding device memory it can give back when nothing uses it
/// (a model's weights between batches).
pub trait Evict: Send + Sync {
    /// Frees what it holds if nothing is using it now; whether it did.
    fn evict(&self) -> bool;
}

/// The memory budget of one device.
pub struct MemoryBudget {
    device: String,
    /// Bytes the budget allows; `u64::MAX` for no limit.
    limit: AtomicU64,
    used: AtomicU64,
    peak: AtomicU64,
    /// Reservations asked for so far (numbering the injected failures).
    asked: AtomicU64,
    injection: Mutex<Option<Injection>>,
    evictable: Mutex<Vec<Weak<dyn Evict>>>,
}

impl std::fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBudget")
            .field("device", &self.device)
            .field("limit", &self.limit())
            .field("used", &self.used())
            .field("injection", &self.injection())
            .finish()
    }
}

impl MemoryBudget {
    /// The budget of device `device` (its id, `cuda:0`), limited to `limit`
    /// bytes (`None`: no limit), failing as `KILN_INJECT_OOM` asks.
    pub fn new(device: String, limit: Option<u64>) -> Result<Arc<MemoryBudget>> {
        Ok(MemoryBudget::with_injection(
            device,
            limit,
            Injection::from_env()?,
        ))
    }

    /// [`MemoryBudget::new`] with the injection given rather than read.
    pub fn with_injection(
        device: String,
        limit: Option<u64>,
        injection: Option<Injection>,
    ) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            device,
            limit: AtomicU64::new(limit.unwrap_or(u64::MAX)),
            used: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            asked: AtomicU64::new(0),
            injection: Mutex::new(injection),
            evictable: Mutex::new(Vec::new()),
        })
    }

    /// The default limit of a device with `memory_bytes` of memory:
    /// [`DEFAULT_DEVICE_FRACTION`] of it, or none where it is not reported.
    pub fn default_limit(memory_bytes: Option<u64>) -> Option<u64> {
        memory_bytes.map(|m| (m as f64 * DEFAULT_DEVICE_FRACTION) as u64)
    }

    /// The device this budget belongs to.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Changes the limit (`None`: no limit). Reservations already made stay.
    pub fn set_limit(&self, limit: Option<u64>) {
        self.limit
            .store(limit.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn limit(&self) -> Option<u64> {
        match self.limit.load(Ordering::Relaxed) {
            u64::MAX => None,
            l => Some(l),
        }
    }

    /// Injects failures from now on as `injection` says (`None`: none).
    pub fn set_injection(&self, injection: Option<Injection>) {
        if let Ok(mut slot) = self.injection.lock() {
            *slot = injection;
        }
    }

    /// The failures injected now.
    pub fn injection(&self) -> Option<Injection> {
        self.injection.lock().ok().and_then(|i| *i)
    }

    /// Bytes reserved now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The most bytes reserved at once so far.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Lets the budget free `holder`'s memory under pressure. Held weakly:
    /// dropping the holder unregisters it.
    pub fn register_evictable(&self, holder: Weak<dyn Evict>) {
        if let Ok(mut list) = self.evictable.lock() {
            list.retain(|w| w.strong_count() > 0);
            list.push(holder);
        }
    }

    /// Reserves `bytes` for `what` (an allocation's name, for the error).
    pub fn reserve(self: &Arc<Self>, bytes: u64, what: &'static str) -> Result<Reservation> {
        let n = self.asked.fetch_add(1, Ordering::Relaxed) + 1;
        if self.injection().is_some_and(|i| i.fails(n)) {
            TOTALS.injected.fetch_add(1, Ordering::Relaxed);
            return Err(KernelError::OutOfMemory {
                device: self.device.clone(),
                what,
                requested: bytes,
                detail: format!("injected failure ({INJECT_OOM_VAR})"),
            });
        }
        let mut evicted = false;
        loop {
            let limit = self.limit.load(Ordering::Relaxed);
            let used = self.used.load(Ordering::Relaxed);
            match used.checked_add(bytes) {
                Some(total) if total <= limit => {
                    if self
                        .used
                        .compare_exchange_weak(used, total, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                    {
                        self.peak.fetch_max(total, Ordering::Relaxed);
                        return Ok(Reservation {
                            budget: Arc::clone(self),
                            bytes,
                        });
                    }
                }
                // Full: free what idle holders keep, then look again.
                _ if !evicted => {
                    evicted = true;
                    self.evict();
                }
                _ => {
                    TOTALS.refused.fetch_add(1, Ordering::Relaxed);
                    return Err(KernelError::OutOfMemory {
                        device: self.device.clone(),
                        what,
                        requested: bytes,
                        detail: format!(
                            "{} of the {limit}-byte budget free (kiln.device_memory_limit)",
                            limit.saturating_sub(used)
                        ),
                    });
                }
            }
        }
    }

    /// Asks every evictable holder to free its memory.
    fn evict(&self) {
        let holders: Vec<Arc<dyn Evict>> = match self.evictable.lock() {
            Ok(list) => list.iter().filter_map(Weak::upgrade).collect(),
            Err(_) => return,
        };
        let evicted = holders.iter().filter(|h| h.evict()).count();
        TOTALS
            .evictions
            .fetch_add(evicted as u64, Ordering::Relaxed);
    }
}

/// Bytes reserved in a [`MemoryBudget`], given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: u64,
}

impl Reservation {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// A device allocation with its reservation: the allocation is freed first,
/// then its bytes go back to the budget.
#[derive(Debug)]
pub struct Held<T> {
    value: T,
    reservation: Reservation,
}

impl<T> Held<T> {
    pub fn new(value: T, reservation: Reservation) -> Held<T> {
        Held { value, reservation }
    }

    /// Bytes reserved for it.
    pub fn bytes(&self) -> u64 {
        self.reservation.bytes
    }
}

impl<T> std::ops::Deref for Held<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> std::ops::DerefMut for Held<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

/// What split-and-retry did; EXPLAIN ANALYZE shows them as `oom_retries`,
/// `oom_splits` and `oom_cpu_fallbacks`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OomCounts {
    /// Device runs of a piece after an out-of-memory.
    pub retries: u64,
    /// Pieces halved after an out-of-memory.
    pub splits: u64,
    /// Pieces at the floor that ran on the CPU after an out-of-memory.
    pub cpu_fallbacks: u64,
}

impl OomCounts {
    pub fn add(&mut self, other: OomCounts) {
        self.retries += other.retries;
        self.splits += other.splits;
        self.cpu_fallbacks += other.cpu_fallbacks;
    }

    pub fn is_zero(&self) -> bool {
        *self == OomCounts::default()
    }
}

/// Runs `rows` rows (a batch, a tile) on the device with `on_device`, one
/// range at a time: a range that runs out of device memory (`is_oom` says
/// which errors are) is halved and its halves run in turn, down to `floor`
/// rows; a range at the floor that still does not fit runs with `on_cpu`.
/// Every other error ends the run. The results come back in row order, each
/// with its range; `counts` adds up what happened.
pub fn split_and_retry<T, E>(
    rows: usize,
    floor: usize,
    counts: &mut OomCounts,
    mut on_device: impl FnMut(Range<usize>) -> std::result::Result<T, E>,
    mut on_cpu: impl FnMut(Range<usize>) -> std::result::Result<T, E>,
    is_oom: impl Fn(&E) -> bool,
) -> std::result::Result<Vec<(Range<usize>, T)>, E> {
    let floor = floor.max(1);
    let mut out = Vec::new();
    // Ranges still to run, the next one last; `true` for a retry.
    let mut todo = vec![(0..rows, false)];
    while let Some((range, retry)) = todo.pop() {
        if retry {
            counts.retries += 1;
        }
        match on_device(range.clone()) {
            Ok(value) => out.push((range, value)),
            Err(e) if is_oom(&e) => {
                if range.len() > floor {
                    counts.splits += 1;
                    let mid = range.start + range.len() / 2;
                    todo.push((mid..range.end, true));
                    todo.push((range.start..mid, true));
                } else {
                    counts.cpu_fallbacks += 1;
                    let value = on_cpu(range.clone())?;
                    out.push((range, value));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// What every budget of this process has done so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemoryTotals {
    /// Reservations failed on purpose (`KILN_INJECT_OOM`).
    pub injected: u64,
    /// Reservations refused for want of budget.
    pub refused: u64,
    /// Idle holders (model weights) evicted under pressure.
    pub evictions: u64,
}

struct Totals {
    injected: AtomicU64,
    refused: AtomicU64,
    evictions: AtomicU64,
}

static TOTALS: Totals = Totals {
    injected: AtomicU64::new(0),
    refused: AtomicU64::new(0),
    evictions: AtomicU64::new(0),
};

/// The process-wide [`MemoryTotals`].
pub fn totals() -> MemoryTotals {
    MemoryTotals {
        injected: TOTALS.injected.load(Ordering::Relaxed),
        refused: TOTALS.refused.load(Ordering::Relaxed),
        evictions: TOTALS.evictions.load(Ordering::Relaxed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oom(_: &KernelError) -> bool {
        true
    }

    #[test]
    fn reservations_add_up_and_give_back() {
        let budget = MemoryBudget::with_injection("test:0".into(), Some(100), None);
        let a = budget.reserve(60, "a").unwrap();
        let err = budget.reserve(50, "b").unwrap_err();
        assert!(err.is_out_of_memory(), "{err}");
        assert!(err.to_string().contains("test:0"), "{err}");
        assert!(
            err.to_string().contains("40 of the 100-byte budget free"),
            "{err}"
        );
        assert_eq!(budget.used(), 60);
        drop(a);
        assert_eq!(budget.used(), 0);
        let _b = budget.reserve(100, "b").unwrap();
        assert_eq!(budget.peak(), 100);
        budget.set_limit(None);
        let _c = budget.reserve(u64::MAX - 100, "c").unwrap();
        assert!(budget.reserve(1, "d").is_err(), "overflow is refused");
    }

    #[test]
    fn injection_parses_and_fails_as_asked() {
        assert_eq!(Injection::parse("every:3").unwrap(), Injection::Every(3));
        assert_eq!(
            Injection::parse("p:0.25,seed:7").unwrap(),
            Injection::Probability { p: 0.25, seed: 7 }
        );
        assert_eq!(
            Injection::parse("p:1").unwrap(),
            Injection::Probability { p: 1.0, seed: 0 }
        );
        for bad in [
            "every:0",
            "every",
            "p:2",
            "p:x",
            "seed:3",
            "every:2,p:0.5",
            "often",
        ] {
            let err = Injection::parse(bad).unwrap_err();
            assert!(err.to_string().contains(INJECT_OOM_VAR), "{bad}: {err}");
        }
        let every = MemoryBudget::with_injection("t".into(), None, Some(Injection::Every(3)));
        let failed: Vec<bool> = (0..9).map(|_| every.reserve(1, "x").is_err()).collect();
        assert_eq!(
            failed,
            [false, false, true, false, false, true, false, false, true]
        );
        let draws = |seed| {
            let b = MemoryBudget::with_injection(
                "t".into(),
                None,
                Some(Injection::Probability { p: 0.3, seed }),
            );
            (0..1000)
                .map(|_| b.reserve(1, "x").is_err())
                .collect::<Vec<_>>()
        };
        let (a, b) = (draws(3), draws(3));
        assert_eq!(a, b, "the same seed fails the same reservations");
        let share = a.iter().filter(|f| **f).count();
        assert!(
            (230..370).contains(&share),
            "{share} of 1000 failed at p=0.3"
        );
        assert_ne!(draws(4), a);
    }

    struct Weights(Mutex<Option<Reservation>>);

    impl Evict for Weights {
        fn evict(&self) -> bool {
            self.0.lock().unwrap().take().is_some()
        }
    }

    #[test]
    fn pressure_evicts_idle_holders_first() {
        let budget = MemoryBudget::with_injection("t".into(), Some(100), None);
        let weights = Arc::new(Weights(Mutex::new(Some(budget.reserve(80, "w").unwrap()))));
        let holder: Arc<dyn Evict> = Arc::<Weights>::clone(&weights);
        budget.register_evictable(Arc::downgrade(&holder));
        let batch = budget.reserve(50, "batch").unwrap();
        assert!(weights.0.lock().unwrap().is_none(), "weights evicted");
        assert_eq!(budget.used(), 50);
        drop(batch);
        // Nothing left to evict: a reservation beyond the limit fails.
        assert!(budget.reserve(101, "x").is_err());
    }

    #[test]
    fn split_and_retry_halves_to_the_floor_then_uses_the_cpu() {
        // The device takes at most 3 rows at once.
        let mut counts = OomCounts::default();
        let out = split_and_retry(
            10,
            2,
            &mut counts,
            |r| {
                if r.len() > 3 {
                    Err(KernelError::Internal("oom".into()))
                } else {
                    Ok(("device", r.len()))
                }
            },
            |r| Ok(("cpu", r.len())),
            oom,
        )
        .unwrap();
        let ranges: Vec<_> = out.iter().map(|(r, _)| r.clone()).collect();
        assert_eq!(ranges, [0..2, 2..5, 5..7, 7..10]);
        assert!(out.iter().all(|(_, (at, _))| *at == "device"));
        assert_eq!(
            counts,
            OomCounts {
                retries: 6,
                splits: 3,
                cpu_fallbacks: 0
            }
        );

        // A device that never fits: every floor-sized piece goes to the CPU.
        let mut counts = OomCounts::default();
        let out = split_and_retry(
            5,
            2,
            &mut counts,
            |_| Err::<(), _>(KernelError::Internal("oom".into())),
            |_| Ok(()),
            oom,
        )
        .unwrap();
        let ranges: Vec<_> = out.iter().map(|(r, _)| r.clone()).collect();
        assert_eq!(ranges, [0..2, 2..3, 3..5]);
        assert_eq!(counts.cpu_fallbacks, 3);

        // Any other error ends the run.
        let mut counts = OomCounts::default();
        let err = split_and_retry(
            4,
            1,
            &mut counts,
            |_| Err::<(), _>(KernelError::Internal("boom".into())),
            |_| Ok(()),
            |_| false,
        )
        .unwrap_err();
        assert!(err.to_string().contains("boom"));
    }
}
