//! What drawing a workflow as SVG may cost: layout-rs's work grows much faster than the graph
//! (a 600-node chain takes seconds, 25 fully connected nodes minutes), so larger pictures are
//! refused before any work, and the drawings that are made run one at a time on a blocking
//! thread, never on the async threads that answer requests.

use tokio::sync::Semaphore;

use super::graph::Picture;
use crate::error::{ApiError, ApiResult};

/// Most boxes a layout may place: the nodes, and a bend for every rank an edge crosses.
pub const MAX_LAYOUT_BOXES: usize = 300;

/// Drawings made at once; further requests wait their turn.
static DRAWING: Semaphore = Semaphore::const_new(1);

/// Draws `picture` with `render` on a blocking thread, one drawing at a time; refuses with 400
/// a picture whose layout would place more than [`MAX_LAYOUT_BOXES`] boxes.
pub async fn draw(picture: Picture, render: fn(&Picture) -> String) -> ApiResult<String> {
    let boxes = layout_boxes(&picture);
    if boxes > MAX_LAYOUT_BOXES {
        return Err(ApiError::bad_request(format!(
            "Workflow {} is too large to draw as SVG: its layout takes {boxes} boxes (its nodes \
             and a bend for every rank an edge crosses), more than {MAX_LAYOUT_BOXES}; use \
             format=dot or format=mermaid",
            picture.title
        )));
    }
    let _turn = DRAWING
        .acquire()
        .await
        .expect("the semaphore is never closed");
    tokio::task::spawn_blocking(move || render(&picture))
        .await
        .map_err(|e| ApiError::internal(format!("drawing the workflow failed: {e}")))
}

/// Boxes a layered layout places: each node on the rank of its longest path from a root, and
/// a bend for each rank an edge skips. Layered layouts may shorten edges, never lengthen them
/// all: this bounds their work from above.
fn layout_boxes(picture: &Picture) -> usize {
    let count = picture.nodes.len();
    let mut parents = vec![0usize; count];
    let mut children = vec![Vec::new(); count];
    for edge in &picture.edges {
        parents[edge.to] += 1;
        children[edge.from].push(edge.to);
    }
    let mut rank = vec![0usize; count];
    let mut ready: Vec<usize> = (0..count).filter(|&n| parents[n] == 0).collect();
    while let Some(node) = ready.pop() {
        for &child in &children[node] {
            rank[child] = rank[child].max(rank[node] + 1);
            parents[child] -= 1;
            if parents[child] == 0 {
                ready.push(child);
            }
        }
    }
    let bends: usize = picture
        .edges
        .iter()
        .map(|e| rank[e.to].saturating_sub(rank[e.from]).saturating_sub(1))
        .sum();
    count + bends
}

#[cfg(test)]
mod tests {
    use super::super::super::dag::NodeKind;
    use super::super::graph::{PicEdge, PicNode};
    use super::*;

    /// `count` nodes with an edge from each to every later one, or to the next only.
    fn picture(count: usize, dense: bool) -> Picture {
        let nodes = (0..count)
            .map(|i| PicNode {
                name: format!("n{i}"),
                kind: NodeKind::Function,
                details: Vec::new(),
            })
            .collect();
        let edges = (0..count)
            .flat_map(|from| {
                let last = if dense { count } else { (from + 2).min(count) };
                (from + 1..last).map(move |to| PicEdge {
                    from,
                    to,
                    label: None,
                })
            })
            .collect();
        Picture {
            title: "w".into(),
            nodes,
            edges,
        }
    }

    #[test]
    fn a_chain_takes_a_box_per_node_and_long_edges_a_bend_per_rank() {
        assert_eq!(layout_boxes(&picture(300, false)), 300);
        // 12 nodes, and an edge from i to j bends j - i - 1 times: C(12, 3) bends.
        assert_eq!(layout_boxes(&picture(12, true)), 12 + 220);
    }

    #[tokio::test]
    async fn a_picture_over_the_budget_is_refused_before_drawing() {
        let error = draw(picture(20, true), |_| unreachable!())
            .await
            .unwrap_err();
        assert_eq!(error.status, axum::http::StatusCode::BAD_REQUEST);
        assert!(error.message.contains("1160 boxes"), "{}", error.message);
        let drawn = draw(picture(3, false), |p| p.title.clone()).await.unwrap();
        assert_eq!(drawn, "w");
    }
}
