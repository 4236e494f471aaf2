// Math helpers WGSL does not provide, appended to the families that use them
// (see INCLUDES in src/gpu/pipeline.rs); never a module of its own.

// erf with |error| < 1.2e-7 (Numerical Recipes' erfc Chebyshev fit); WGSL has no erf.
fn erf(x: f32) -> f32 {
    let z = abs(x);
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
        t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
        t * (-0.82215223 + t * 0.17087277)))))))));
    return select(r - 1.0, 1.0 - r, x >= 0.0);
}

// PyTorch's default (erf) GELU.
fn gelu_erf(x: f32) -> f32 {
    return 0.5 * x * (1.0 + erf(x * 0.70710678118654752));
}
