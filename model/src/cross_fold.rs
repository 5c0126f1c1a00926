//! The first cross layer folded into the first deep layer, for the TFRS tutorial's
//! shape (one linear `Cross`, then the deep MLP).
//!
//! Split x0 into its user columns `u` (the same for every candidate of a request)
//! and its item columns `i`. The cross layer is
//! `x1 = x0 ⊙ (W x0 + b + s·x0) + x0`, and the first deep layer's pre-activation
//! `y = A x1 + a`. Both are linear in each factor, so with `W` and `A` split by
//! the same columns (`W_ui` = rows of `u`, columns of `i`, and so on):
//!
//! ```text
//! x1_u = c(u) + u ⊙ (W_ui i)            c(u) = u ⊙ (1 + W_uu u + b_u + s·u)
//! x1_i = e(u) ⊙ i + i ⊙ (s·i + W_ii i)  e(u) = 1 + W_iu u + b_i
//! y    = k(u) + G(u) i + h(i)
//!        k(u) = a + A_u c(u)
//!        G(u) = A_u diag(u) W_ui + A_i diag(e(u))      (units × item width)
//!        h(i) = A_i (i ⊙ (s·i + W_ii i))               (units, once per item at load)
//! ```
//!
//! A request computes `k` and `G` once; each candidate then costs one
//! `units × item width` product instead of the cross product and the
//! `units × input_dim` layer, the two largest matmuls but one. In the tutorial
//! (160 user columns, 32 item columns, 192 units) that removes ~40 % of a
//! candidate's multiply-adds (docs/benchmarks.md). `G` costs
//! `units × user width × item width` per request, so requests with fewer
//! candidates than the item width take the unfolded path.

use candle_core::{Device, Tensor};

use crate::ModelError;
use crate::dcn_v2::DcnV2;

/// The per-item and per-model parts of the expansion.
#[derive(Debug)]
pub(crate) struct CrossFold {
    units: usize,
    user_width: usize,
    item_width: usize,
    diag_scale: f32,
    /// `W_uuᵀ` `(user, user)`, `W_iuᵀ` `(user, item)`: the user's own terms.
    w_uu_t: Tensor,
    w_iu_t: Tensor,
    /// `W_uiᵀ` `(item, user)`.
    w_ui_t: Tensor,
    /// `A_uᵀ` `(user, units)`, `A_iᵀ` `(item, units)`.
    a_u_t: Tensor,
    a_i_t: Tensor,
    /// `b_u`, `b_i` as rows `(1, width)`, zeros without a bias.
    b_u: Tensor,
    b_i: Tensor,
    /// The deep layer's bias `a`, `(1, units)`.
    a: Tensor,
    /// `h(i)` per item `[items, units]`, rows parallel to the item table's.
    items: Vec<f32>,
    /// `h` of the row for items the table lacks.
    unknown: Vec<f32>,
}

impl CrossFold {
    /// Bytes the per-item table of a catalog of `items` would take under `model`,
    /// when the model has the foldable shape.
    pub(crate) fn table_bytes(model: &DcnV2, items: usize) -> Option<usize> {
        let deep = model.single_cross_then_deep()?.deep();
        let units = deep.weight().dims2().ok()?.0;
        Some((items + 1).saturating_mul(units).saturating_mul(4))
    }

    /// The expansion of `model` for x0's columns split into `user_cols` and
    /// `item_cols`, with `item_rows` (`[items, item width]`) and `unknown_row`
    /// the item side of x0. `None` when the model has another shape or one side
    /// has no columns (nothing to expand).
    pub(crate) fn new(
        model: &DcnV2,
        user_cols: &[u32],
        item_cols: &[u32],
        item_rows: &[f32],
        unknown_row: &[f32],
    ) -> Result<Option<Self>, ModelError> {
        let Some(tail) = model.single_cross_then_deep() else {
            return Ok(None);
        };
        let (cross, deep) = (tail.cross(), tail.deep());
        if user_cols.is_empty() || item_cols.is_empty() {
            return Ok(None);
        }
        let device = Device::Cpu;
        let w = cross.product_weight()?.to_device(&device)?;
        let (dim, _) = w.dims2()?;
        let pick = |cols: &[u32]| Tensor::from_vec(cols.to_vec(), cols.len(), &device);
        let (user, item) = (pick(user_cols)?, pick(item_cols)?);
        // Rows are W's outputs, columns its inputs: W_xy = rows of x, columns of y.
        let block = |rows: &Tensor, cols: &Tensor| -> candle_core::Result<Tensor> {
            w.index_select(rows, 0)?.index_select(cols, 1)
        };
        let w_uu_t = block(&user, &user)?.t()?.contiguous()?;
        let w_iu_t = block(&item, &user)?.t()?.contiguous()?;
        let w_ui_t = block(&user, &item)?.t()?.contiguous()?;
        let w_ii_t = block(&item, &item)?.t()?.contiguous()?;
        let a_full = deep.weight();
        let units = a_full.dims2()?.0;
        let a_u_t = a_full.index_select(&user, 1)?.t()?.contiguous()?;
        let a_i_t = a_full.index_select(&item, 1)?.t()?.contiguous()?;
        let bias = match cross.product_bias() {
            Some(b) => b.clone(),
            None => Tensor::zeros(dim, candle_core::DType::F32, &device)?,
        };
        let b_u = bias.index_select(&user, 0)?.unsqueeze(0)?;
        let b_i = bias.index_select(&item, 0)?.unsqueeze(0)?;
        let a = match deep.bias() {
            Some(a) => a.unsqueeze(0)?,
            None => Tensor::zeros((1, units), candle_core::DType::F32, &device)?,
        };
        let diag_scale = cross.diag_scale() as f32;
        let item_width = item_cols.len();
        let per_item = |rows: &[f32], n: usize| -> candle_core::Result<Vec<f32>> {
            if n == 0 {
                return Ok(Vec::new());
            }
            let x = Tensor::from_slice(rows, (n, item_width), &device)?;
            let inner = (x.matmul(&w_ii_t)? + (&x * f64::from(diag_scale))?)?;
            (x * inner)?.matmul(&a_i_t)?.flatten_all()?.to_vec1::<f32>()
        };
        let items = per_item(item_rows, item_rows.len() / item_width)?;
        let unknown = per_item(unknown_row, 1)?;
        Ok(Some(Self {
            units,
            user_width: user_cols.len(),
            item_width,
            diag_scale,
            w_uu_t,
            w_iu_t,
            w_ui_t,
            a_u_t,
            a_i_t,
            b_u,
            b_i,
            a,
            items,
            unknown,
        }))
    }

    /// Whether a request with `candidates` is cheaper folded: `G` costs about as
    /// much as `item width` candidates save.
    pub(crate) fn pays_for(&self, candidates: usize) -> bool {
        candidates >= self.item_width
    }

    /// Units of the first deep layer (the width of what [`CrossFold::append`] writes).
    pub(crate) fn units(&self) -> usize {
        self.units
    }

    /// Appends `y` `[candidates, units]` to `out`, given the request's user side
    /// and each candidate's item side (`item_rows`, `[candidates, item width]`)
    /// and table position (`None`: the unknown row).
    pub(crate) fn append(
        &self,
        user_side: &[f32],
        item_rows: Vec<f32>,
        positions: &[Option<usize>],
        out: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let n = positions.len();
        if n == 0 {
            return Ok(());
        }
        let device = Device::Cpu;
        let u = Tensor::from_slice(user_side, (1, self.user_width), &device)?;
        let user_own =
            ((u.matmul(&self.w_uu_t)? + &self.b_u)? + (&u * f64::from(self.diag_scale))?)?;
        let c = (&u * (user_own + 1.0)?)?;
        let e = ((u.matmul(&self.w_iu_t)? + &self.b_i)? + 1.0)?;
        let k = (c.matmul(&self.a_u_t)? + &self.a)?;
        // Gᵀ = W_uiᵀ diag(u) A_uᵀ + diag(e) A_iᵀ, `(item width, units)`.
        let g_t = (self.w_ui_t.broadcast_mul(&u)?.matmul(&self.a_u_t)?
            + self.a_i_t.broadcast_mul(&e.t()?)?)?;
        let x = Tensor::from_vec(item_rows, (n, self.item_width), &device)?;
        let mut h = Vec::with_capacity(n * self.units);
        for position in positions {
            h.extend_from_slice(match position {
                Some(p) => &self.items[p * self.units..(p + 1) * self.units],
                None => &self.unknown,
            });
        }
        let h = Tensor::from_vec(h, (n, self.units), &device)?;
        let y = (x.matmul(&g_t)? + h)?.broadcast_add(&k)?;
        out.extend(y.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    }
}
