//! The real MovieLens 100K, read by the library (the RecBole layout of the
//! recbole==1.2.1 wheel, fetched by `scripts/fetch-movielens.sh`).

use std::collections::HashSet;
use std::path::Path;

use recsys::movielens::{Layout, read_dir};
use recsys::stream::is_valid_movie_id;

use crate::common::ml100k;

#[test]
fn real_ml100k_reads_with_the_published_counts() {
    let dir = ml100k();
    let ml = read_dir(Path::new(&dir)).expect("read real MovieLens 100K");
    assert_eq!(ml.layout, Layout::RecBole);
    assert_eq!(ml.users.len(), 943);
    assert_eq!(ml.movies.len(), 1682);
    assert_eq!(ml.ratings.len(), 100_000);
    let ids: HashSet<&str> = ml.movies.iter().map(|m| m.movie_id.as_str()).collect();
    assert_eq!(ids.len(), 1682);
    assert!(ids.iter().all(|id| is_valid_movie_id(id)));
    assert_eq!(ml.movies[0].movie_id, "toy+story+1995");
    assert!(ml.ratings.iter().all(|r| (1.0..=5.0).contains(&r.rating)));
}
