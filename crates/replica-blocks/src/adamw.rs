//! AdamW: Loshchilov & Hutter, "Decoupled Weight Decay Regularization", arXiv
//! 1711.05101 (registry: [`crate::papers::ADAMW`]), computed as `torch.optim.AdamW`
//! computes it, fused: one pass over each parameter updates its moments and the
//! parameter in place.
//!
//! candle_nn's `AdamW` builds each update from about a dozen tensor ops, each of
//! which allocates a tensor of the parameter's size (and the OS faults those pages in
//! again on every step); [`FusedAdamW`] allocates nothing per step and reads each
//! parameter, gradient and moment once. [`FusedAdamW::clip_and_step`] folds
//! `torch.nn.utils.clip_grad_norm_` into the same pass: the norm is one read of the
//! gradients, and the clipping factor is applied as the update reads each gradient
//! instead of in a pass that writes the gradients back.
//!
//! Per element, at the parameter's own step `t` (from 1; a parameter without a
//! gradient is skipped and its step not counted, as torch), in torch's order of
//! operations, in f32 with the scalars formed in f64 as torch's Python code forms them:
//!
//! ```text
//! p ← p·(1 − lr·λ)
//! m ← m + (1 − β1)·(g − m)                         (torch's lerp)
//! v ← v·β2 + (1 − β2)·g·g
//! p ← p + (−lr / (1 − β1^t))·m / (√v / √(1 − β2^t) + ε)
//! ```

use std::cell::RefCell;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Layout, Result, Tensor, Var};
use rayon::prelude::*;
use replica_check::config_check::{finite_positive, non_negative, probability};
use replica_check::{ConfigCheck, Footprint, Workload};
use serde::{Deserialize, Serialize};

/// The hyperparameters of `torch.optim.AdamW`, with its defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    /// The learning rate (torch: `lr`, default 1e-3).
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// The decay of the first moment (torch: `betas[0]`, default 0.9).
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    /// The decay of the second moment (torch: `betas[1]`, default 0.999).
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// Added to the bias-corrected root of the second moment (torch: `eps`, default 1e-8).
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// The decoupled weight decay λ of the first group (torch: `weight_decay`, default 1e-2).
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
}

fn default_lr() -> f64 {
    1e-3
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}
fn default_weight_decay() -> f64 {
    1e-2
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: default_lr(),
            beta1: default_beta1(),
            beta2: default_beta2(),
            eps: default_eps(),
            weight_decay: default_weight_decay(),
        }
    }
}

impl ConfigCheck for AdamWConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        non_negative("lr", self.lr)?;
        // torch accepts betas in [0, 1); a beta of 1 would never move its moment.
        probability("beta1", self.beta1)?;
        probability("beta2", self.beta2)?;
        finite_positive("eps", self.eps)?;
        non_negative("weight_decay", self.weight_decay)
    }

    /// The two moments, one f32 per parameter element each.
    fn footprint(&self, work: &Workload) -> Footprint {
        Footprint::params(work.bytes(work.elements() * 2))
    }
}

/// One parameter and its optimiser state.
struct Slot {
    var: Var,
    weight_decay: f64,
    /// The first moment (torch's `exp_avg`).
    m: Vec<f32>,
    /// The second moment (torch's `exp_avg_sq`).
    v: Vec<f32>,
    /// How many updates this parameter has had (torch's per-parameter `step`).
    step: u64,
}

/// `torch.optim.AdamW` over f32 CPU parameters, one fused in-place pass per
/// parameter. Parameter groups that differ only in their weight decay (minGPT's
/// decayed matrices and undecayed biases, norms and embeddings) share one optimiser:
/// [`add_param_group`](Self::add_param_group).
pub struct FusedAdamW {
    config: AdamWConfig,
    slots: Vec<Slot>,
}

impl FusedAdamW {
    /// An optimiser over `vars` with `config` (its `weight_decay` for these).
    pub fn new(vars: Vec<Var>, config: AdamWConfig) -> Result<Self> {
        let mut optimiser = Self {
            config,
            slots: Vec::new(),
        };
        let weight_decay = optimiser.config.weight_decay;
        optimiser.add_param_group(vars, weight_decay)?;
        Ok(optimiser)
    }

    /// Adds `vars` with their own decoupled weight decay (torch: a param group
    /// with its own `weight_decay`).
    pub fn add_param_group(&mut self, vars: Vec<Var>, weight_decay: f64) -> Result<()> {
        let config = AdamWConfig {
            weight_decay,
            ..self.config.clone()
        };
        let shapes: Vec<Vec<usize>> = vars.iter().map(|v| v.dims().to_vec()).collect();
        let work = Workload::of_shapes(shapes.iter().map(Vec::as_slice), 4);
        replica_check::admit(&config, &work).map_err(|message| candle_core::Error::Msg(format!("AdamW: {message}")))?;
        for var in vars {
            if var.dtype() != DType::F32 || !var.device().is_cpu() {
                candle_core::bail!(
                    "FusedAdamW updates f32 parameters on the CPU, got a {:?} parameter of shape {:?} on {:?}",
                    var.dtype(),
                    var.dims(),
                    var.device()
                )
            }
            if self
                .slots
                .iter()
                .any(|s| s.var.as_tensor().id() == var.as_tensor().id())
            {
                candle_core::bail!("FusedAdamW: a parameter of shape {:?} is given twice", var.dims())
            }
            let n = var.elem_count();
            self.slots.push(Slot {
                var,
                weight_decay,
                m: vec![0.0; n],
                v: vec![0.0; n],
                step: 0,
            });
        }
        Ok(())
    }

    /// The optimiser's hyperparameters (the first group's weight decay).
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// The parameters, in the order they were added.
    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.slots.iter().map(|s| &s.var)
    }

    /// The learning rate.
    pub fn learning_rate(&self) -> f64 {
        self.config.lr
    }

    /// Sets the learning rate (a schedule's step).
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// The global L2 norm of the parameters' gradients in `grads` (torch's
    /// `clip_grad_norm_` total norm), accumulated in f64 in one read of each gradient.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut squares = 0f64;
        for slot in &self.slots {
            if let Some(grad) = grads.get(slot.var.as_tensor()) {
                squares += sum_of_squares(grad)?;
            }
        }
        Ok(squares.sqrt())
    }

    /// One AdamW update of every parameter that has a gradient in `grads`.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.update(grads, 1.0)
    }

    /// `torch.nn.utils.clip_grad_norm_(params, max_norm)` then [`step`](Self::step),
    /// without writing the clipped gradients: the gradients are scaled by
    /// `min(max_norm / (norm + 1e-6), 1)` (in f32, as torch) as the update reads them.
    /// `grads` is left as it was. Returns the norm before clipping.
    pub fn clip_and_step(&mut self, grads: &GradStore, max_norm: f64) -> Result<f64> {
        if !(max_norm.is_finite() && max_norm > 0.0) {
            candle_core::bail!("clip_and_step: `max_norm` must be a finite number > 0, got {max_norm}")
        }
        let norm = self.grad_norm(grads)?;
        // torch forms the coefficient from its f32 norm tensor and clamps it at 1.
        let coefficient = (max_norm as f32 / (norm as f32 + 1e-6)).min(1.0);
        self.update(grads, coefficient)?;
        Ok(norm)
    }

    fn update(&mut self, grads: &GradStore, grad_scale: f32) -> Result<()> {
        let c = &self.config;
        let mut updates = Vec::with_capacity(self.slots.len());
        for slot in &mut self.slots {
            let Some(grad) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            if grad.dims() != slot.var.dims() || grad.dtype() != DType::F32 {
                candle_core::bail!(
                    "FusedAdamW: the gradient of a parameter of shape {:?} is {:?} of shape {:?}, expected f32",
                    slot.var.dims(),
                    grad.dtype(),
                    grad.dims()
                )
            }
            slot.step += 1;
            let step = slot.step as f64;
            // The scalars as torch's Python code forms them (f64), then rounded to f32 where the
            // tensor ops take them.
            let bias_correction1 = 1.0 - c.beta1.powf(step);
            let bias_correction2 = 1.0 - c.beta2.powf(step);
            let op = Update {
                decay: (1.0 - c.lr * slot.weight_decay) as f32,
                decays: slot.weight_decay != 0.0,
                lerp_weight: (1.0 - c.beta1) as f32,
                beta2: c.beta2 as f32,
                one_minus_beta2: (1.0 - c.beta2) as f32,
                neg_step_size: (-(c.lr / bias_correction1)) as f32,
                bias_correction2_sqrt: bias_correction2.sqrt() as f32,
                eps: c.eps as f32,
                grad_scale,
                moments: RefCell::new((&mut slot.m, &mut slot.v)),
            };
            updates.push((slot.var.as_tensor().clone(), grad.contiguous()?, op));
        }
        // The parameters are independent: updated in parallel, each by one thread, so
        // the bits do not depend on the thread count.
        updates
            .into_par_iter()
            .try_for_each(|(param, grad, op)| param.inplace_op2(&grad, &op))
    }
}

impl candle_nn::Optimizer for FusedAdamW {
    type Config = AdamWConfig;

    fn new(vars: Vec<Var>, config: AdamWConfig) -> Result<Self> {
        FusedAdamW::new(vars, config)
    }

    fn step(&mut self, grads: &GradStore) -> Result<()> {
        FusedAdamW::step(self, grads)
    }

    fn learning_rate(&self) -> f64 {
        self.config.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.config.lr = lr
    }
}

/// Σ g² of an f32 tensor, in f64.
fn sum_of_squares(grad: &Tensor) -> Result<f64> {
    let grad = grad.contiguous()?;
    let (storage, layout) = grad.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("FusedAdamW: gradients must be on the CPU")
    };
    let values = contiguous_slice(cpu, layout)?;
    // Eight f32 partial sums (vectorised), folded into f64 every block so that long
    // gradients keep f64's accuracy.
    let mut total = 0f64;
    for block in values.chunks(4096) {
        let mut lanes = [0f32; 8];
        let mut chunks = block.chunks_exact(8);
        for chunk in &mut chunks {
            for (lane, x) in lanes.iter_mut().zip(chunk) {
                *lane += x * x;
            }
        }
        let tail: f32 = chunks.remainder().iter().map(|x| x * x).sum();
        total += lanes.iter().map(|&l| l as f64).sum::<f64>() + tail as f64;
    }
    Ok(total)
}

fn contiguous_slice<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("FusedAdamW: expected a contiguous tensor")
    };
    Ok(&storage.as_slice::<f32>()?[start..end])
}

/// One parameter's update, run by candle on the parameter's storage in place.
struct Update<'a> {
    decay: f32,
    decays: bool,
    lerp_weight: f32,
    beta2: f32,
    one_minus_beta2: f32,
    neg_step_size: f32,
    bias_correction2_sqrt: f32,
    eps: f32,
    grad_scale: f32,
    moments: RefCell<(&'a mut Vec<f32>, &'a mut Vec<f32>)>,
}

impl candle_core::InplaceOp2 for Update<'_> {
    fn name(&self) -> &'static str {
        "fused-adamw"
    }

    fn cpu_fwd(
        &self,
        param: &mut CpuStorage,
        param_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<()> {
        let grad = contiguous_slice(grad, grad_layout)?;
        let Some((start, end)) = param_layout.contiguous_offsets() else {
            candle_core::bail!("FusedAdamW: expected a contiguous parameter")
        };
        let CpuStorage::F32(param) = param else {
            candle_core::bail!("FusedAdamW updates f32 parameters")
        };
        let param = &mut param[start..end];
        let mut moments = self.moments.borrow_mut();
        let (m, v) = &mut *moments;
        if grad.len() != param.len() || m.len() != param.len() {
            candle_core::bail!(
                "FusedAdamW: parameter of {} elements, gradient of {}",
                param.len(),
                grad.len()
            )
        }
        let one = self.grad_scale == 1.0;
        for (((p, &g), m), v) in param.iter_mut().zip(grad).zip(m.iter_mut()).zip(v.iter_mut()) {
            // torch multiplies the gradients by the clip coefficient even when it is 1,
            // which leaves them unchanged.
            let g = if one { g } else { g * self.grad_scale };
            let mut x = *p;
            if self.decays {
                x *= self.decay;
            }
            *m += self.lerp_weight * (g - *m);
            *v = *v * self.beta2 + self.one_minus_beta2 * g * g;
            let denom = v.sqrt() / self.bias_correction2_sqrt + self.eps;
            *p = x + self.neg_step_size * *m / denom;
        }
        Ok(())
    }
}
