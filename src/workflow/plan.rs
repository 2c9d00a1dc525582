//! Which DAG nodes run together. Each maximal linear chain of function nodes (every node but
//! the first has exactly one parent, which has exactly one child) is one stage, run by one
//! worker call; every model node is a stage of its own. Stages form a DAG of their own.

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
    /// Fuses the linear chains of function nodes of `dag`.
    pub fn new(dag: &Dag) -> Self {
        let nodes = &dag.nodes;
        let fuses_with_parent = |i: usize| match nodes[i].parents.as_slice() {
            &[parent] => {
                nodes[i].kind == NodeKind::Function
                    && nodes[parent].kind == NodeKind::Function
                    && nodes[parent].children.len() == 1
            }
            _ => false,
        };
        let mut stages: Vec<StagePlan> = Vec::new();
        let mut stage_of = vec![usize::MAX; nodes.len()];
        for &i in &dag.order {
            if fuses_with_parent(i) {
                let stage = stage_of[nodes[i].parents[0]];
                stages[stage].nodes.push(i);
                stages[stage].name.clone_from(&nodes[i].name);
                stage_of[i] = stage;
            } else {
                stage_of[i] = stages.len();
                stages.push(StagePlan {
                    nodes: vec![i],
                    // Parents come first in the order, so their stages exist already.
                    parents: nodes[i].parents.iter().map(|&p| stage_of[p]).collect(),
                    name: nodes[i].name.clone(),
                    route: None,
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
    /// lists of node names per stage.
    fn stages(dag_yaml: &str) -> (Plan, Vec<Vec<String>>) {
        let yaml =
            format!("models:\n  m1:\n    url: a.mar\n  m2:\n    url: b.mar\ndag:\n{dag_yaml}");
        let spec = WorkflowSpec::parse(&yaml).unwrap();
        let functions = spec
            .dag
            .iter()
            .flat_map(|(node, children)| std::iter::once(node).chain(children))
            .filter(|name| !name.starts_with('m'))
            .cloned()
            .collect();
        let dag = Dag::build(&spec, &functions).unwrap();
        let plan = Plan::new(&dag);
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
}
