//! Placement as data: why an operator stays on the CPU ([`Reason`]), where
//! it runs ([`Placement`]), and the record of one plan's placements that
//! [`PlaceOnDevice`](super::PlaceOnDevice) writes as it decides and EXPLAIN
//! reads ([`PlacementRecord`], collected through a [`PlacementLog`]).
//!
//! DataFusion's operators carry no annotations (Spark's `TreeNodeTag`, which
//! Comet's fallback reasons ride on, has no counterpart), and every rule
//! that changes a child rebuilds its parents, so a record keyed by node
//! identity would not survive the rules after Kiln's. The record is keyed
//! by each operator's position instead — the child indexes from the root,
//! with the Parquet scan guards (inserted by the one rule after placement,
//! above scans only) passed through — and names the operator, which EXPLAIN
//! checks.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use datafusion::common::config::{ConfigEntry, ConfigExtension, ExtensionOptions};
use datafusion::common::{Result, plan_datafusion_err};
use datafusion::physical_plan::ExecutionPlan;
use kiln_engine::exec::DecodeGuardExec;

/// Why an operator stays on the CPU. An operator keeps every reason that
/// applies to it (each expression the kernels lack, not the first only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// A `kiln.*` switch is off: its name.
    Switch(&'static str),
    /// The session's device is not a GPU: its id.
    NotAGpu(String),
    /// No GPU kernel for the operator, or for this form of it.
    Operator(String),
    /// An expression the kernels cannot compute (a predicate, a projected
    /// value, a key, an aggregate or its argument).
    Expression(String),
    /// The cost model: the work would not pay for moving its data.
    CostModel(String),
    /// The device refuses the program the operator would run.
    Device(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Switch(name) => write!(f, "{name} is off"),
            Reason::NotAGpu(id) => write!(f, "kiln.device is {id}"),
            Reason::CostModel(why) => write!(f, "cost model: {why}"),
            Reason::Operator(why) | Reason::Expression(why) | Reason::Device(why) => {
                f.write_str(why)
            }
        }
    }
}

/// Why an operator is not lowered: the reasons it stays on the CPU, or a
/// DataFusion error met while lowering it — a planning bug, which fails the
/// query instead of passing for a reason to run on the CPU.
#[derive(Debug)]
pub enum Refusal {
    Cpu(Vec<Reason>),
    Failed(datafusion::error::DataFusionError),
}

impl From<Reason> for Refusal {
    fn from(reason: Reason) -> Self {
        Refusal::Cpu(vec![reason])
    }
}

impl From<datafusion::error::DataFusionError> for Refusal {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        Refusal::Failed(e)
    }
}

impl Refusal {
    /// The operator has no GPU kernel of this form.
    pub fn operator(why: impl Into<String>) -> Refusal {
        Reason::Operator(why.into()).into()
    }

    /// An expression the kernels cannot compute.
    pub fn expression(why: impl Into<String>) -> Refusal {
        Reason::Expression(why.into()).into()
    }
}

/// Where an operator runs, as the placement rule decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// On the GPU: the device's id.
    Gpu(String),
    /// On the CPU, for these reasons (at least one).
    Cpu(Vec<Reason>),
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placement::Gpu(device) => write!(f, "on {device}"),
            Placement::Cpu(reasons) => {
                f.write_str("cpu: ")?;
                for (i, reason) in reasons.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{reason}")?;
                }
                Ok(())
            }
        }
    }
}

/// An operator's position in a plan: the child indexes from the root, the
/// scan guards passed through.
pub type Position = Vec<usize>;

/// The placements of one plan, as the rule decided them.
#[derive(Debug, Clone, Default)]
pub struct PlacementRecord {
    /// Nothing was lowered, for this reason (the device is the CPU, the
    /// GPU is switched off).
    whole: Option<Reason>,
    /// Each operator's name and placement, by position.
    nodes: HashMap<Position, (String, Placement)>,
}

impl PlacementRecord {
    /// A plan none of whose operators is considered for the GPU.
    pub fn whole(reason: Reason) -> PlacementRecord {
        PlacementRecord {
            whole: Some(reason),
            nodes: HashMap::new(),
        }
    }

    pub fn insert(&mut self, at: Position, node: &dyn ExecutionPlan, placement: Placement) {
        self.nodes.insert(at, (node.name().to_string(), placement));
    }

    /// The placement recorded for `node` at `at`; an error where the
    /// record has none, or one for another operator (a rule after
    /// placement moved operators: a bug, not a reason).
    pub fn get(&self, at: &Position, node: &dyn ExecutionPlan) -> Result<Placement> {
        if let Some(reason) = &self.whole {
            return Ok(Placement::Cpu(vec![reason.clone()]));
        }
        match self.nodes.get(at) {
            Some((name, placement)) if name == node.name() => Ok(placement.clone()),
            Some((name, _)) => Err(plan_datafusion_err!(
                "the placement of {} at {at:?} was recorded for {name}",
                node.name()
            )),
            None => Err(plan_datafusion_err!(
                "no placement recorded for {} at {at:?}",
                node.name()
            )),
        }
    }
}

/// Every operator of `plan` with its position, in pre-order (as DataFusion
/// prints a plan), scan guards included at the position of the scan they
/// guard.
pub fn positions(plan: &Arc<dyn ExecutionPlan>) -> Vec<(Position, Arc<dyn ExecutionPlan>)> {
    fn walk(
        plan: &Arc<dyn ExecutionPlan>,
        at: &mut Position,
        out: &mut Vec<(Position, Arc<dyn ExecutionPlan>)>,
    ) {
        out.push((at.clone(), Arc::clone(plan)));
        let guard = plan.is::<DecodeGuardExec>();
        for (i, child) in plan.children().into_iter().enumerate() {
            if !guard {
                at.push(i);
            }
            walk(child, at, out);
            if !guard {
                at.pop();
            }
        }
    }
    let mut out = Vec::new();
    walk(plan, &mut Vec::new(), &mut out);
    out
}

/// A sink for the placement record of the plan being planned: EXPLAIN
/// plans its statement with one in the session's options, and the rule
/// writes into it. Not a setting (it has no keys, and SHOW lists nothing);
/// its clones share the one record, on purpose: DataFusion's planner may
/// clone the options it hands the rule.
#[derive(Debug, Clone, Default)]
pub struct PlacementLog(Arc<Mutex<Option<PlacementRecord>>>);

impl PlacementLog {
    /// The record of the last plan placed, taken out of the log.
    pub fn take(&self) -> Option<PlacementRecord> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    pub fn put(&self, record: PlacementRecord) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(record);
    }
}

impl ConfigExtension for PlacementLog {
    const PREFIX: &'static str = "kiln_placement_log";
}

impl ExtensionOptions for PlacementLog {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, _value: &str) -> Result<()> {
        Err(plan_datafusion_err!(
            "{}.{key} is not a setting",
            Self::PREFIX
        ))
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::Schema;
    use datafusion::physical_plan::empty::EmptyExec;
    use datafusion::physical_plan::union::UnionExec;

    #[test]
    fn reasons_and_placements_read_as_explain_prints_them() {
        let cpu = Placement::Cpu(vec![
            Reason::Switch("kiln.gpu_filter"),
            Reason::Expression("a || b has no GPU kernel".into()),
            Reason::CostModel("~25 input rows".into()),
        ]);
        assert_eq!(
            cpu.to_string(),
            "cpu: kiln.gpu_filter is off; a || b has no GPU kernel; cost model: ~25 input rows"
        );
        assert_eq!(Placement::Gpu("wgpu:0".into()).to_string(), "on wgpu:0");
        assert_eq!(
            Reason::NotAGpu("cpu:0".into()).to_string(),
            "kiln.device is cpu:0"
        );
    }

    #[test]
    fn a_record_answers_by_position_and_checks_the_operator() {
        let leaf: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(Arc::new(Schema::empty())));
        let union = UnionExec::try_new(vec![Arc::clone(&leaf), Arc::clone(&leaf)]).unwrap();
        let at = positions(&union);
        assert_eq!(
            at.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(),
            vec![vec![], vec![0], vec![1]]
        );
        let mut record = PlacementRecord::default();
        record.insert(vec![1], leaf.as_ref(), Placement::Gpu("wgpu:0".into()));
        assert_eq!(
            record.get(&vec![1], leaf.as_ref()).unwrap(),
            Placement::Gpu("wgpu:0".into())
        );
        let missing = record.get(&vec![0], leaf.as_ref()).unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("no placement recorded for EmptyExec at [0]"),
            "{missing}"
        );
        let other = record.get(&vec![1], union.as_ref()).unwrap_err();
        assert!(
            other.to_string().contains("recorded for EmptyExec"),
            "{other}"
        );
        let whole = PlacementRecord::whole(Reason::Switch("kiln.gpu_transforms"));
        assert_eq!(
            whole.get(&vec![7], leaf.as_ref()).unwrap().to_string(),
            "cpu: kiln.gpu_transforms is off"
        );
    }

    #[test]
    fn the_log_is_no_setting_and_its_clones_share_the_record() {
        let log = PlacementLog::default();
        let mut copy = log.cloned();
        assert!(copy.set("x", "1").is_err());
        assert!(copy.entries().is_empty());
        let copy = copy
            .as_any()
            .downcast_ref::<PlacementLog>()
            .unwrap()
            .clone();
        copy.put(PlacementRecord::whole(Reason::NotAGpu("cpu:0".into())));
        assert!(log.take().is_some());
        assert!(log.take().is_none());
    }
}
