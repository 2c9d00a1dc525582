//! Which DAG nodes run together. Each maximal linear chain of function nodes (every node but
//! the first has exactly one parent, which has exactly one child) is one stage, run by one
//! worker call. A model node is a stage of its own, unless it may fuse: then it also takes
//! the chain that feeds only it (its prelude) and the chain that only it feeds (its
//! postlude), and its workers run the whole stage in one call. Stages form a DAG of their own.

use super::dag::{Dag, NodeKind};
use super::route::Router;

/// One stage: DAG nodes run in turn by one call.
#[derive(Debug, Clone)]
pub struct StagePlan {
    /// Indices into [`Dag::nodes`], in chain order.
    pub nodes: Vec<usize>,
    /// The stages whose outputs this stage takes (indices into [`Plan::stages`]).
    pub parents: Vec<usize>,
    /// The name its output goes by: its last node's, which fan-in fields and the keys of
    /// several leaves are named after.
    pub name: String,
    /// Which child stages run after it, from its last node's route; None: all of them.
    pub route: Option<Router>,
    /// The model node whose workers run the stage, when it has one (then the stage's other
    /// nodes are its prelude and postlude functions).
    pub model: Option<usize>,
}

/// The stages of a workflow; every stage comes after its parents.
#[derive(Debug, Clone)]
pub struct Plan {
    pub stages: Vec<StagePlan>,
    /// The stage that receives the request.
    pub entry: usize,
    /// The stages whose outputs answer the request, in the DAG's leaf order.
    pub leaves: Vec<usize>,
    /// The stage of each DAG node.
    pub stage_of: Vec<usize>,
}

impl Plan {
    /// Fuses the linear chains of function nodes of `dag`, and each model node `fuses(i)`
    /// allows with its prelude and postlude.
    pub fn new(dag: &Dag, fuses: impl Fn(usize) -> bool) -> Self {
        let nodes = &dag.nodes;
        let mut stages: Vec<StagePlan> = Vec::new();
        let mut stage_of = vec![usize::MAX; nodes.len()];
        // Whether node `i` joins the stage of its only parent, which feeds only it.
        let joins_parent = |i: usize, stages: &[StagePlan], stage_of: &[usize]| {
            let &[parent] = nodes[i].parents.as_slice() else {
                return false;
            };
            if nodes[parent].children.len() != 1 {
                return false;
            }
            match (nodes[parent].kind, nodes[i].kind) {
                // A function follows a function (in a chain, or a model's postlude).
                (NodeKind::Function, NodeKind::Function) => true,
                // A fusing model takes the chain of functions before it, once.
                (NodeKind::Function, NodeKind::Model) => {
                    fuses(i) && stages[stage_of[parent]].model.is_none()
                }
                // A fusing model's postlude starts.
                (NodeKind::Model, NodeKind::Function) => fuses(parent),
                _ => false,
            }
        };
        for &i in &dag.order {
            if joins_parent(i, &stages, &stage_of) {
                let stage = stage_of[nodes[i].parents[0]];
                stages[stage].nodes.push(i);
                stages[stage].name.clone_from(&nodes[i].name);
                if nodes[i].kind == NodeKind::Model {
                    stages[stage].model = Some(i);
                }
                stage_of[i] = stage;
            } else {
                stage_of[i] = stages.len();
                stages.push(StagePlan {
                    nodes: vec![i],
                    // Parents come first in the order, so their stages exist already.
                    parents: nodes[i].parents.iter().map(|&p| stage_of[p]).collect(),
                    name: nodes[i].name.clone(),
                    route: None,
                    model: (nodes[i].kind == NodeKind::Model).then_some(i),
                });
            }
        }
        // A routed node has several children, so it ends its stage, and each child starts one.
        for stage in &mut stages {
            let last = &nodes[*stage.nodes.last().unwrap_or(&0)];
            stage.route = last.route.as_ref().map(|r| r.map(|child| stage_of[child]));
        }
        Self {
            entry: stage_of[dag.entry],
            leaves: dag.leaves.iter().map(|&l| stage_of[l]).collect(),
            stages,
            stage_of,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::spec::WorkflowSpec;

    /// The plan of a spec whose `m*` nodes are models and every other node a function, as
    /// lists of node names per stage; no model fuses.
    fn stages(dag_yaml: &str) -> (Plan, Vec<Vec<String>>) {
        fused_stages(dag_yaml, "")
    }

    /// As [`stages`], where the models whose `fuse` property is true (m1's props are
    /// `m1_props`) and are not `shared` may fuse, as the loader decides for models the
    /// workflow starts from its own archive.
    fn fused_stages(dag_yaml: &str, m1_props: &str) -> (Plan, Vec<Vec<String>>) {
        let yaml = format!(
            "models:\n  m1:\n    url: a.mar\n{m1_props}  m2:\n    url: b.mar\n  shared:\n    model: s\ndag:\n{dag_yaml}"
        );
        let spec = WorkflowSpec::parse(&yaml).unwrap();
        let functions = spec
            .dag
            .iter()
            .flat_map(|(node, children)| std::iter::once(node).chain(children))
            .filter(|name| !name.starts_with('m') && *name != "shared")
            .cloned()
            .collect();
        let dag = Dag::build(&spec, &functions).unwrap();
        let plan = Plan::new(&dag, |i| {
            let name = &dag.nodes[i].name;
            !m1_props.is_empty() && name != "shared" && spec.models[name].props.fuse
        });
        let names = plan
            .stages
            .iter()
            .map(|s| s.nodes.iter().map(|&i| dag.nodes[i].name.clone()).collect())
            .collect();
        (plan, names)
    }

    #[test]
    fn a_chain_of_functions_is_one_stage() {
        let (plan, names) = stages("  a: [b]\n  b: [c]\n  c: [d]\n");
        assert_eq!(names, [["a", "b", "c", "d"]]);
        assert_eq!((plan.entry, plan.leaves.as_slice()), (0, &[0][..]));
        assert_eq!(plan.stages[0].name, "d");
        assert!(plan.stage_of.iter().all(|&s| s == 0));
    }

    #[test]
    fn models_break_chains_and_stay_alone() {
        let (plan, names) = stages("  a: [b]\n  b: [m1]\n  m1: [m2]\n  m2: [c]\n  c: [d]\n");
        assert_eq!(
            names,
            [vec!["a", "b"], vec!["m1"], vec!["m2"], vec!["c", "d"]]
        );
        let parents: Vec<&[usize]> = plan.stages.iter().map(|s| s.parents.as_slice()).collect();
        assert_eq!(parents, [&[][..], &[0], &[1], &[2]]);
        assert_eq!(plan.stages[0].name, "b");
    }

    #[test]
    fn fan_out_and_fan_in_end_chains() {
        let (plan, names) =
            stages("  pre: [a, m1]\n  a: [b]\n  b: [agg]\n  m1: [agg]\n  agg: [post]\n");
        let find = |n: &str| names.iter().position(|s| s.iter().any(|x| x == n)).unwrap();
        assert_eq!(names[find("pre")], ["pre"]);
        assert_eq!(names[find("a")], ["a", "b"]);
        assert_eq!(names[find("agg")], ["agg", "post"]);
        let agg = &plan.stages[find("agg")];
        let mut parents: Vec<&str> = agg
            .parents
            .iter()
            .map(|&p| plan.stages[p].name.as_str())
            .collect();
        parents.sort();
        assert_eq!(parents, ["b", "m1"]);
        assert_eq!(plan.leaves, [find("post")]);
        for (s, stage) in plan.stages.iter().enumerate() {
            assert!(
                stage.parents.iter().all(|&p| p < s),
                "stages are topological"
            );
        }
    }

    const SEQ4: &str = "  pre: [m1]\n  m1: [m2]\n  m2: [post]\n";

    #[test]
    fn a_model_takes_its_prelude_and_postlude() {
        let (plan, names) = fused_stages(SEQ4, "    fuse: true\n");
        assert_eq!(names, [["pre", "m1"], ["m2", "post"]]);
        let models: Vec<Option<usize>> = plan.stages.iter().map(|s| s.model).collect();
        assert_eq!(
            models,
            [Some(plan.stages[0].nodes[1]), Some(plan.stages[1].nodes[0])]
        );
        assert_eq!(
            (plan.stages[0].name.as_str(), plan.stages[1].name.as_str()),
            ("m1", "post")
        );
        assert_eq!(plan.stages[1].parents, [0]);
        let (_, names) = fused_stages(
            "  a: [b]\n  b: [m1]\n  m1: [c]\n  c: [d]\n",
            "    fuse: true\n",
        );
        assert_eq!(names, [["a", "b", "m1", "c", "d"]]);
    }

    #[test]
    fn the_fuse_switch_and_models_not_started_here_keep_models_alone() {
        let (plan, names) = fused_stages(SEQ4, "    fuse: false\n");
        assert_eq!(names, [vec!["pre"], vec!["m1"], vec!["m2", "post"]]);
        assert_eq!(plan.stages[1].model, Some(plan.stages[1].nodes[0]));
        let (_, names) = fused_stages("  pre: [shared]\n  shared: [post]\n", "    fuse: true\n");
        assert_eq!(names, [["pre"], ["shared"], ["post"]]);
    }

    #[test]
    fn fan_out_fan_in_and_routes_keep_functions_out_of_a_model_stage() {
        let on = "    fuse: true\n";
        // pre feeds two nodes; m1's child has two parents.
        let (_, names) = fused_stages("  pre: [m1, a]\n  m1: [agg]\n  a: [agg]\n", on);
        assert!(names.iter().all(|s| s.len() == 1), "{names:?}");
        // m1 has two parents; m1 feeds two nodes.
        let (_, names) = fused_stages("  pre: [a, b]\n  a: [m1]\n  b: [m1]\n  m1: [c, d]\n", on);
        assert!(names.iter().all(|s| s.len() == 1), "{names:?}");
        // A routed model ends its stage.
        let routed = "  pre: [m1]\n  m1: [a, b]\nroutes:\n  m1:\n    cases: {x: a, y: b}\n";
        let (plan, mut names) = fused_stages(routed, on);
        names.sort();
        assert_eq!(names, [vec!["a"], vec!["b"], vec!["pre", "m1"]]);
        assert!(plan.stages[0].route.is_some());
        // A function between two models goes with the first; the second stays alone.
        let (_, names) = fused_stages("  m1: [f]\n  f: [m2]\n", on);
        assert_eq!(names, [vec!["m1", "f"], vec!["m2"]]);
    }
}
