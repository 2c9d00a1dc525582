//! Running one request through a workflow's stages on the async runtime: every stage starts
//! as soon as its parents have answered, so independent branches run concurrently. A routed
//! stage's output chooses which children run; a stage none of whose parents chose it is
//! skipped, and so are the stages only it feeds. The first failure fails the request and
//! abandons the other branches, as does dropping the request (the client went away).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures::future::{try_join_all, FutureExt, Shared};
use serde_json::{Map, Value};

use super::plan::Plan;
use super::served_workflow::Workflow;
use super::stage::{NodeTiming, Stage, Timings};
use crate::error::{ApiError, ApiResult};
use crate::job::{InferenceRequest, InferenceResponse, Param};
use crate::timing;

/// What a stage did: None when it was skipped; else its output and the child stages it
/// chose (None: all of them).
type Ran = Option<(Arc<InferenceResponse>, Option<Arc<[usize]>>)>;

type StageFuture<'a> = Shared<futures::future::BoxFuture<'a, ApiResult<Ran>>>;

/// Runs `request` through `workflow` and returns the leaf's output (an object keyed by leaf
/// name when there are several leaves). JSON nested too deep for a worker is refused first
/// (400), as a model refuses it, not retried as a node's failure.
pub async fn execute(
    workflow: &Workflow,
    request: InferenceRequest,
) -> ApiResult<InferenceResponse> {
    crate::json_depth::check_request(&request, false)?;
    let _in_flight = workflow.in_flight.enter();
    let started = Instant::now();
    let answer = run(&workflow.plan, &workflow.stages, request).await;
    let failed = answer.as_ref().map_or(true, |a| a.status >= 400);
    workflow.metrics.record_request(started.elapsed(), failed);
    answer
}

/// Runs `request` through the stages of `plan`, `stages[i]` calling stage `i`.
pub async fn run(
    plan: &Plan,
    stages: &[Box<dyn Stage>],
    request: InferenceRequest,
) -> ApiResult<InferenceResponse> {
    // A KServe envelope unwraps the entry node's input only (docs/kserve.md).
    let headers: Vec<(String, String)> = request
        .headers
        .iter()
        .filter(|(name, _)| name != crate::kserve::ENVELOPE_HEADER)
        .cloned()
        .collect();
    let mut entry_request = Some(request);
    // What each node that answered spent, for the answer's Server-Timing.
    let took: Mutex<Vec<NodeTiming>> = Mutex::new(Vec::new());
    let started = Instant::now();
    let mut futures: Vec<StageFuture<'_>> = Vec::with_capacity(plan.stages.len());
    for (i, stage) in plan.stages.iter().enumerate() {
        let parents: Vec<(&str, StageFuture<'_>)> = stage
            .parents
            .iter()
            .map(|&p| (plan.stages[p].name.as_str(), futures[p].clone()))
            .collect();
        let own_input = if i == plan.entry {
            entry_request.take()
        } else {
            None
        };
        let headers = &headers;
        let callee = &stages[i];
        let took = &took;
        // Only a single leaf streams: other stages' chunks are joined into the one body their
        // children (or the merged answer) take.
        let streams = plan.leaves == [i];
        let future = async move {
            let input = match own_input {
                Some(input) => input,
                None => match stage_input(i, headers, parents).await? {
                    Some(input) => input,
                    None => return Ok(None),
                },
            };
            let timings = Timings {
                log: took,
                stage: i,
            };
            let mut output = callee.call(input, timings).await?;
            if !streams && output.more.is_some() {
                output = Arc::new(InferenceResponse::clone(&output).whole().await?);
            }
            let chosen = match &stage.route {
                None => None,
                Some(router) => Some(Arc::from(router.choose(&output.body).map_err(|why| {
                    ApiError::internal(format!(
                        "Workflow node {:?} could not be routed: {why}",
                        stage.name
                    ))
                })?)),
            };
            Ok(Some((output, chosen)))
        };
        futures.push(future.boxed().shared());
    }
    let leaves = plan.leaves.iter().map(|&l| futures[l].clone());
    let outputs = try_join_all(leaves).await?;
    let ran: Vec<(&str, &Arc<InferenceResponse>)> = plan
        .leaves
        .iter()
        .zip(&outputs)
        .filter_map(|(&l, out)| Some((plan.stages[l].name.as_str(), &out.as_ref()?.0)))
        .collect();
    let mut answer = match ran.as_slice() {
        [(_, single)] if plan.leaves.len() == 1 => InferenceResponse::clone(single),
        // Every stage that runs chooses at least one child, so some leaf always runs.
        [] => return Err(ApiError::internal("no leaf of the workflow ran")),
        _ => merge_leaves(ran),
    };
    let mut took = std::mem::take(&mut *took.lock().unwrap_or_else(|e| e.into_inner()));
    took.sort_by_key(|t| t.stage);
    let entries = took
        .iter()
        .map(|t| timing::node_entry(&t.node, t.took, t.tries))
        .chain([timing::entry("workflow", started.elapsed())]);
    answer
        .headers
        .retain(|(name, _)| name != timing::SERVER_TIMING);
    answer.headers.push((
        timing::SERVER_TIMING.into(),
        entries.collect::<Vec<_>>().join(", "),
    ));
    Ok(answer)
}

/// The input of non-entry stage `i`: the parent's output as `body`, or one field per parent
/// that ran and chose it, named after the parent; None when no parent chose it.
async fn stage_input(
    i: usize,
    headers: &[(String, String)],
    parents: Vec<(&str, StageFuture<'_>)>,
) -> ApiResult<Option<InferenceRequest>> {
    let single = parents.len() == 1;
    let (names, outputs): (Vec<&str>, Vec<_>) = parents.into_iter().unzip();
    let outputs = try_join_all(outputs).await?;
    let params: Vec<Param> = names
        .into_iter()
        .zip(outputs)
        .filter_map(|(name, ran)| {
            let (output, chosen) = ran?;
            let chose_me = chosen.is_none_or(|c| c.contains(&i));
            chose_me.then(|| Param {
                name: if single { "body" } else { name }.to_string(),
                content_type: None,
                value: output.body.clone(),
            })
        })
        .collect();
    Ok((!params.is_empty()).then(|| InferenceRequest {
        id: String::new(),
        headers: headers.to_vec(),
        params,
    }))
}

/// Several leaves answer one JSON object keyed by leaf name; a JSON output is embedded as
/// JSON, anything else as a string.
fn merge_leaves(outputs: Vec<(&str, &Arc<InferenceResponse>)>) -> InferenceResponse {
    let mut merged = Map::new();
    for (name, output) in outputs {
        let is_json = output
            .content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/json"));
        let value = is_json
            .then(|| serde_json::from_slice(&output.body).ok())
            .flatten()
            .unwrap_or_else(|| Value::String(String::from_utf8_lossy(&output.body).into_owned()));
        merged.insert(name.to_string(), value);
    }
    InferenceResponse {
        status: 200,
        content_type: Some("application/json".into()),
        headers: Vec::new(),
        body: Bytes::from(Value::Object(merged).to_string()),
        trace: None,
        more: None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::time::Duration;

    use futures::future::BoxFuture;
    use tokio::time::{sleep, Instant};

    use super::*;
    use crate::error::ApiError;
    use crate::workflow::dag::Dag;
    use crate::workflow::spec::WorkflowSpec;
    use crate::workflow::stage::StageResult;

    /// What a fake stage does with its input.
    type Behaviour =
        Box<dyn Fn(&InferenceRequest) -> BoxFuture<'static, StageResult> + Send + Sync>;

    /// A stage that records its inputs and answers as `behaviour` says.
    struct Fake {
        name: String,
        behaviour: Behaviour,
        seen: Arc<Mutex<Vec<(String, InferenceRequest)>>>,
    }

    impl Stage for Fake {
        fn call<'a>(
            &'a self,
            input: InferenceRequest,
            timings: Timings<'a>,
        ) -> BoxFuture<'a, StageResult> {
            self.seen
                .lock()
                .unwrap()
                .push((self.name.clone(), input.clone()));
            timings.record(&self.name, Duration::ZERO, 1);
            (self.behaviour)(&input)
        }
    }

    fn output(body: &str, json: bool) -> StageResult {
        Ok(Arc::new(InferenceResponse {
            status: 200,
            content_type: json.then(|| "application/json".to_string()),
            headers: Vec::new(),
            body: Bytes::from(body.to_string()),
            trace: None,
            more: None,
        }))
    }

    /// Answers `{name}({inputs})` after `delay_ms`.
    fn echo(name: &str, delay_ms: u64) -> Behaviour {
        let name = name.to_string();
        Box::new(move |input| {
            let args: Vec<String> = input
                .params
                .iter()
                .map(|p| format!("{}={}", p.name, String::from_utf8_lossy(&p.value)))
                .collect();
            let text = format!("{name}({})", args.join(","));
            async move {
                sleep(Duration::from_millis(delay_ms)).await;
                output(&text, false)
            }
            .boxed()
        })
    }

    struct Setup {
        plan: Plan,
        stages: Vec<Box<dyn Stage>>,
        seen: Arc<Mutex<Vec<(String, InferenceRequest)>>>,
    }

    impl Setup {
        /// The stages called so far, by name.
        fn called(&self) -> Vec<String> {
            let seen = self.seen.lock().unwrap();
            seen.iter().map(|(n, _)| n.clone()).collect()
        }
    }

    /// A plan of function nodes (no fusion happens where a node has several parents or
    /// children); `behaviour(name)` says what each stage does, named by its last node.
    fn setup(dag_yaml: &str, behaviour: impl Fn(&str) -> Behaviour) -> Setup {
        let spec = WorkflowSpec::parse(&format!("dag:\n{dag_yaml}")).unwrap();
        let functions: HashSet<String> = spec
            .dag
            .iter()
            .flat_map(|(n, c)| std::iter::once(n).chain(c))
            .cloned()
            .collect();
        let plan = Plan::new(&Dag::build(&spec, &functions).unwrap(), |_| false);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stages = plan
            .stages
            .iter()
            .map(|s| {
                Box::new(Fake {
                    name: s.name.clone(),
                    behaviour: behaviour(&s.name),
                    seen: seen.clone(),
                }) as Box<dyn Stage>
            })
            .collect();
        Setup { plan, stages, seen }
    }

    fn request(body: &str) -> InferenceRequest {
        InferenceRequest {
            id: "r1".into(),
            headers: vec![("x-trace".into(), "7".into())],
            params: vec![Param {
                name: "data".into(),
                content_type: Some("text/plain".into()),
                value: Bytes::from(body.to_string()),
            }],
        }
    }

    const DIAMOND: &str = "  pre: [a, b]\n  a: [agg]\n  b: [agg]\n";

    #[tokio::test(start_paused = true)]
    async fn fan_out_runs_branches_concurrently_and_fan_in_names_fields_after_parents() {
        let s = setup(DIAMOND, |n| echo(n, if n == "a" { 30 } else { 10 }));
        let started = Instant::now();
        let answer = run(&s.plan, &s.stages, request("5")).await.unwrap();
        assert_eq!(
            answer.body,
            "agg(a=a(body=pre(data=5)),b=b(body=pre(data=5)))"
        );
        // pre 10 ms, then a and b side by side (30 ms), then agg 10 ms.
        assert_eq!(started.elapsed(), Duration::from_millis(50));
        let seen = s.seen.lock().unwrap();
        let agg = &seen.iter().find(|(n, _)| n == "agg").unwrap().1;
        assert_eq!(agg.headers, [("x-trace".to_string(), "7".to_string())]);
        assert!(agg.params.iter().all(|p| p.content_type.is_none()));
        assert_eq!(seen.len(), 4, "every stage runs once");
    }

    #[tokio::test(start_paused = true)]
    async fn several_leaves_answer_one_object_keyed_by_leaf() {
        let s = setup("  pre: [a, b]\n", |n| match n {
            "a" => Box::new(|_: &InferenceRequest| async { output("[1, 2]", true) }.boxed()),
            _ => echo(n, 0),
        });
        let answer = run(&s.plan, &s.stages, request("x")).await.unwrap();
        let value: Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"a": [1, 2], "b": "b(body=pre(data=x))"})
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_branch_fails_the_request_at_once_and_abandons_the_others() {
        let s = setup(DIAMOND, |n| match n {
            "a" => Box::new(|_: &InferenceRequest| {
                async {
                    sleep(Duration::from_millis(5)).await;
                    Err(ApiError::internal("Workflow node \"a\" failed"))
                }
                .boxed()
            }),
            "b" => echo(n, 10_000),
            _ => echo(n, 0),
        });
        let started = Instant::now();
        let error = run(&s.plan, &s.stages, request("1")).await.unwrap_err();
        assert_eq!(error.message, "Workflow node \"a\" failed");
        assert_eq!(started.elapsed(), Duration::from_millis(5));
        let called = s.called();
        assert!(!called.contains(&"agg".to_string()), "{called:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_request_cancels_the_stages_in_flight_and_starts_no_more() {
        struct Flag(Arc<Mutex<usize>>);
        impl Drop for Flag {
            fn drop(&mut self) {
                *self.0.lock().unwrap() += 1;
            }
        }
        let dropped = Arc::new(Mutex::new(0));
        let counter = dropped.clone();
        let s = setup(DIAMOND, move |n| {
            if n == "pre" || n == "agg" {
                return echo(n, 0);
            }
            let counter = counter.clone();
            Box::new(move |_: &InferenceRequest| {
                let guard = Flag(counter.clone());
                async move {
                    sleep(Duration::from_secs(60)).await;
                    drop(guard);
                    output("late", false)
                }
                .boxed()
            })
        });
        let gone = tokio::time::timeout(
            Duration::from_millis(100),
            run(&s.plan, &s.stages, request("1")),
        )
        .await;
        assert!(gone.is_err());
        assert_eq!(*dropped.lock().unwrap(), 2, "both branches are abandoned");
        let called = s.called();
        assert_eq!(called.len(), 3, "agg never starts: {called:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_parent_that_fails_keeps_its_children_from_running() {
        let s = setup(DIAMOND, |n| match n {
            "pre" => Box::new(|_: &InferenceRequest| {
                async { Err(ApiError::unavailable("no worker")) }.boxed()
            }),
            _ => echo(n, 0),
        });
        let error = run(&s.plan, &s.stages, request("1")).await.unwrap_err();
        assert_eq!(error.status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(s.called(), ["pre"]);
    }

    /// Answers its request's `data` field, so the request names the route.
    fn pass(_: &str) -> Behaviour {
        Box::new(|input: &InferenceRequest| {
            let text = String::from_utf8_lossy(&input.params[0].value).into_owned();
            async move { output(&text, false) }.boxed()
        })
    }

    const ROUTED: &str = "  pre: [a, b, agg]\n  a: [c]\n  c: [agg]\n  b: [agg]\n\
                          routes:\n  pre:\n    cases: {left: a, right: b, both: [a, b]}\n    default: agg\n";

    #[tokio::test(start_paused = true)]
    async fn a_route_runs_the_chosen_children_and_fan_in_gets_only_what_ran() {
        let s = setup(ROUTED, |n| if n == "pre" { pass(n) } else { echo(n, 0) });
        let answer = run(&s.plan, &s.stages, request("left")).await.unwrap();
        // a and c are fused into one stage named c.
        assert_eq!(answer.body, "agg(c=c(body=left))");
        assert_eq!(s.called(), ["pre", "c", "agg"], "b is skipped");
        let answer = run(&s.plan, &s.stages, request("both")).await.unwrap();
        assert_eq!(answer.body, "agg(c=c(body=both),b=b(body=both))");
        let answer = run(&s.plan, &s.stages, request("other")).await.unwrap();
        assert_eq!(
            answer.body, "agg(pre=other)",
            "the default skips a, c and b"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_output_that_matches_no_case_fails_naming_the_node() {
        let routes = "  pre: [a, b]\nroutes:\n  pre:\n    cases: {left: a, right: b}\n";
        let s = setup(routes, |n| if n == "pre" { pass(n) } else { echo(n, 0) });
        let error = run(&s.plan, &s.stages, request("up")).await.unwrap_err();
        assert_eq!(error.status, axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            error.message,
            "Workflow node \"pre\" could not be routed: its output names route \"up\", which matches no case, and the route has no default"
        );
        // Several leaves answer the ones that ran.
        let answer = run(&s.plan, &s.stages, request("right")).await.unwrap();
        let value: Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(value, serde_json::json!({"b": "b(body=right)"}));
    }

    #[tokio::test(start_paused = true)]
    async fn a_seeded_split_shares_requests_reproducibly() {
        let split = "  pre: [a, b]\n  a: [post]\n  b: [post]\nroutes:\n  pre:\n    split: {a: 3, b: 1}\n    seed: 11\n";
        let mut runs = Vec::new();
        for _ in 0..2 {
            let s = setup(split, |n| echo(n, 0));
            let mut answers = Vec::new();
            for _ in 0..400 {
                let answer = run(&s.plan, &s.stages, request("1")).await.unwrap();
                answers.push(answer.body.starts_with(b"post(a="));
            }
            runs.push(answers);
        }
        assert_eq!(runs[0], runs[1], "the same seed, the same choices");
        let to_a = runs[0].iter().filter(|&&a| a).count();
        assert!((270..330).contains(&to_a), "{to_a} of 400 went to a");
    }
}
