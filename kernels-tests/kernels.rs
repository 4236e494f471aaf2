//! Every kernel against PyTorch references (kernels-tests/fixtures, written by
//! tools/make_kernel_fixtures.py), in f32 and, where the adapter has
//! SHADER_F16, f16 storage. The cases and their tolerances are in
//! `kernel_cases.rs`, shared with the browser tests.

#[path = "kernel_cases.rs"]
mod cases;
mod common;

use common::*;

#[test]
fn gemm_matches_torch() {
    let f = Fixture::load("gemm.safetensors");
    pollster::block_on(cases::gemm(&gpu(), &f, &dtypes())).finish("gemm");
}

#[test]
fn conv2d_matches_torch() {
    let f = Fixture::load("conv2d.safetensors");
    pollster::block_on(cases::conv2d(&gpu(), &f, &dtypes())).finish("conv2d");
}

#[test]
fn group_norm_matches_torch() {
    let f = Fixture::load("groupnorm.safetensors");
    pollster::block_on(cases::group_norm(&gpu(), &f, &dtypes())).finish("group_norm");
}

#[test]
fn layer_norm_matches_torch() {
    let f = Fixture::load("layernorm.safetensors");
    pollster::block_on(cases::layer_norm(&gpu(), &f, &dtypes())).finish("layer_norm");
}

#[test]
fn softmax_matches_torch() {
    let f = Fixture::load("softmax.safetensors");
    pollster::block_on(cases::softmax(&gpu(), &f, &dtypes())).finish("softmax");
}

#[test]
fn attention_matches_torch() {
    let f = Fixture::load("attention.safetensors");
    pollster::block_on(cases::attention(&gpu(), &f, &dtypes())).finish("attention");
}

#[test]
fn elementwise_matches_torch() {
    let f = Fixture::load("elementwise.safetensors");
    pollster::block_on(cases::elementwise(&gpu(), &f, &dtypes())).finish("elementwise");
}

#[test]
fn layout_and_timestep_match_torch() {
    let f = Fixture::load("misc.safetensors");
    pollster::block_on(cases::layout_and_timestep(&gpu(), &f, &dtypes()))
        .finish("layout_and_timestep");
}

#[test]
fn tensors_larger_than_a_binding_are_split() {
    pollster::block_on(cases::split_bindings(&gpu(), &dtypes())).finish("split bindings");
}

#[test]
fn ddim_update_matches_diffusers() {
    let f = Fixture::load("scheduler.safetensors");
    pollster::block_on(cases::ddim_update(&gpu(), &f, &dtypes())).finish("ddim_update");
}

#[test]
fn latent_rows_follow_the_step() {
    pollster::block_on(cases::latent_rows(&gpu(), &dtypes())).finish("latent_rows");
}

#[test]
fn channel_major_linears_match_the_transposing_passes() {
    pollster::block_on(cases::channel_linears(&gpu(), &dtypes())).finish("channel linears");
}

#[test]
fn a_layer_norm_fused_into_the_gemm_matches_the_two_passes() {
    pollster::block_on(cases::normed_linear(&gpu(), &dtypes())).finish("normed linear");
}

#[test]
fn concat_readers_match_concat_then_the_op() {
    pollster::block_on(cases::concat_readers(&gpu(), &dtypes())).finish("concat readers");
}
