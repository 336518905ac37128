//! EASE (Steck 2019, "Embarrassingly Shallow Autoencoders"): the item-item
//! weights B minimise ‖X − XB‖² + λ‖B‖² with diag(B) = 0, whose closed form
//! is P = (XᵀX + λI)⁻¹, B_ij = −P_ij / P_jj (i ≠ j), B_jj = 0. X is the
//! binary user × item matrix of the training part (a pair counts once).
//!
//! The inverse goes through a Cholesky factor G = LLᵀ, W = L⁻¹, P = WᵀW, all
//! in f64. Every entry is one [`dot64`] of fixed length and association
//! order, computed once by one thread, so the result is bit-identical for any
//! number of rayon threads. Cost: about n³/2 multiply-adds and 3 dense n × n
//! f64 matrices, hence [`MAX_EASE_ITEMS`].

use rayon::prelude::*;

use super::{Algo, ModelError};

/// Largest catalogue EASE accepts. Memory grows with items² (three dense
/// f64 matrices: 9.6 GB at 20,000 items) and time with items³.
pub const MAX_EASE_ITEMS: usize = 20_000;

/// Bytes of the dense working set at `n` items, in GiB (for the refusal).
fn working_set_gib(n: usize) -> f64 {
    (n as f64) * (n as f64) * (3.0 * 8.0 + 4.0) / f64::from(1u32 << 30)
}

/// Refuses catalogues above [`MAX_EASE_ITEMS`] before any work is done.
pub(crate) fn check_size(n_items: usize) -> Result<(), ModelError> {
    if n_items > MAX_EASE_ITEMS {
        return Err(ModelError::TooManyItems {
            algo: Algo::Ease,
            n_items,
            limit: MAX_EASE_ITEMS,
            gib: working_set_gib(n_items),
        });
    }
    Ok(())
}

/// B as f32, row-major n × n, from the per-user CSR of distinct training
/// items (`offsets`, `items`, each row strictly increasing).
pub(crate) fn fit(
    offsets: &[usize],
    items: &[u32],
    n: usize,
    lambda: f32,
) -> Result<Vec<f32>, ModelError> {
    check_size(n)?;
    if items.is_empty() {
        return Err(ModelError::EmptyTraining {
            algo: Algo::Ease,
            what: "interaction",
        });
    }
    // G = XᵀX + λI. Integer co-occurrence counts are exact in f64, so the
    // accumulation order does not matter here.
    let mut g = vec![0.0f64; n * n];
    for w in offsets.windows(2) {
        let row = &items[w[0]..w[1]];
        for &i in row {
            let gi = &mut g[i as usize * n..][..n];
            for &j in row {
                gi[j as usize] += 1.0;
            }
        }
    }
    let lambda = f64::from(lambda);
    for d in 0..n {
        g[d * n + d] += lambda;
    }
    let l = cholesky_lower(g, n).map_err(|item| ModelError::GramNotPositiveDefinite { item })?;
    let wt = inverse_lower_transposed(&l, n);
    drop(l);
    let p = gram_upper(&wt, n);
    drop(wt);
    // B_ij = −P_ij / P_jj off the diagonal; P is symmetric, the upper
    // triangle holds P_ij for i <= j.
    let at = |i: usize, j: usize| if i <= j { p[i * n + j] } else { p[j * n + i] };
    let mut b = vec![0.0f32; n * n];
    b.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        for (j, v) in row.iter_mut().enumerate() {
            if i != j {
                *v = (-at(i, j) / at(j, j)) as f32;
            }
        }
    });
    Ok(b)
}

/// Lower Cholesky factor of the SPD matrix `g` (row-major, full), row by
/// row: L_ij = (G_ij − L_i,0..j · L_j,0..j) / L_jj. Within a block of rows
/// the rows are independent once the rows above are done, so each block's
/// off-block part runs in parallel; the in-block triangle follows serially
/// per row. `Err(row)` at the first non-positive pivot.
fn cholesky_lower(mut a: Vec<f64>, n: usize) -> Result<Vec<f64>, usize> {
    const BLOCK: usize = 64;
    let mut i0 = 0;
    while i0 < n {
        let i1 = (i0 + BLOCK).min(n);
        let (done, rest) = a.split_at_mut(i0 * n);
        let block = &mut rest[..(i1 - i0) * n];
        let done: &[f64] = done;
        block.par_chunks_mut(n).for_each(|row| {
            // Columns left of the block: the finished rows above.
            for j in 0..i0 {
                let lj = &done[j * n..j * n + j + 1];
                let s = row[j] - dot64(&row[..j], &lj[..j]);
                row[j] = s / lj[j];
            }
        });
        // Columns inside the block, serially (they depend on each other).
        for i in i0..i1 {
            for j in i0..=i {
                let (above, here) = a.split_at_mut(i * n);
                let row = &mut here[..n];
                if j == i {
                    let d = row[i] - dot64(&row[..i], &row[..i]);
                    if d.is_nan() || d <= 0.0 {
                        return Err(i);
                    }
                    row[i] = d.sqrt();
                } else {
                    let lj = &above[j * n..j * n + j + 1];
                    let s = row[j] - dot64(&row[..j], &lj[..j]);
                    row[j] = s / lj[j];
                }
            }
            // Zero the upper part so later steps can read rows whole.
            a[i * n + i + 1..(i + 1) * n].fill(0.0);
        }
        i0 = i1;
    }
    Ok(a)
}

/// Wᵀ for W = L⁻¹ (lower triangular), row-major: row j of the result is
/// column j of W, zero before index j. Column j solves L w = e_j by forward
/// substitution; columns are independent (parallel).
fn inverse_lower_transposed(l: &[f64], n: usize) -> Vec<f64> {
    let mut wt = vec![0.0f64; n * n];
    wt.par_chunks_mut(n).enumerate().for_each(|(j, w)| {
        w[j] = 1.0 / l[j * n + j];
        for i in j + 1..n {
            let li = &l[i * n..i * n + i + 1];
            let s = dot64(&li[j..i], &w[j..i]);
            w[i] = -s / li[i];
        }
    });
    wt
}

/// P = WᵀW from Wᵀ (rows zero before their index): P_ij for i <= j is
/// Wt_i,j.. · Wt_j,j.. . Only the upper triangle is filled.
fn gram_upper(wt: &[f64], n: usize) -> Vec<f64> {
    let mut p = vec![0.0f64; n * n];
    p.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        let wi = &wt[i * n..(i + 1) * n];
        for j in i..n {
            let wj = &wt[j * n..(j + 1) * n];
            row[j] = dot64(&wi[j..], &wj[j..]);
        }
    });
    p
}

/// f64 dot product with eight independent accumulators in a fixed
/// association order (bit-reproducible, vectorisable).
#[inline]
fn dot64(a: &[f64], b: &[f64]) -> f64 {
    const L: usize = 8;
    let mut acc = [0.0f64; L];
    let ca = a.chunks_exact(L);
    let cb = b.chunks_exact(L);
    let mut tail = 0.0f64;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    for (x, y) in ca.zip(cb) {
        for ((s, x), y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// G · P = I for a small SPD matrix, through the same three steps.
    #[test]
    fn inverse_through_cholesky_is_an_inverse() {
        let n = 70; // more than one block
        let mut g = vec![0.0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                g[i * n + j] = 1.0 / (1.0 + (i as f64 - j as f64).abs());
            }
            g[i * n + i] += n as f64;
        }
        let l = cholesky_lower(g.clone(), n).expect("spd");
        let p = gram_upper(&inverse_lower_transposed(&l, n), n);
        let at = |i: usize, j: usize| if i <= j { p[i * n + j] } else { p[j * n + i] };
        for i in 0..n {
            for j in 0..n {
                let v: f64 = (0..n).map(|k| g[i * n + k] * at(k, j)).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-12, "({i},{j}) = {v}");
            }
        }
        assert_eq!(cholesky_lower(vec![1.0, 2.0, 2.0, 1.0], 2).err(), Some(1));
    }

    #[test]
    fn ease_weights_have_a_zero_diagonal_and_follow_co_occurrence() {
        // Users 0, 1 watch items {0, 1}; user 2 watches {2}.
        let offsets = [0, 2, 4, 5];
        let items = [0, 1, 0, 1, 2];
        let b = fit(&offsets, &items, 3, 1.0).expect("fit");
        for d in 0..3 {
            assert_eq!(b[d * 3 + d], 0.0);
        }
        assert!(b[1] > 0.0 && b[3] > 0.0, "{b:?}"); // 0 -> 1 and 1 -> 0
        assert_eq!(b[2], 0.0); // 0 and 2 never co-occur
        assert!(matches!(
            check_size(MAX_EASE_ITEMS + 1),
            Err(ModelError::TooManyItems { .. })
        ));
    }
}
