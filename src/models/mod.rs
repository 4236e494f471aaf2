//! The models of Stable Diffusion 1.x and 2.x on our kernels, one file per
//! diffusers module, fields named after the checkpoint keys.

pub mod clip;
pub mod config;
pub mod files;
pub mod hooks;
pub mod ldm;
pub mod loader;
pub mod locate;
pub mod nn;
pub mod presets;
pub mod sd;
pub mod tokenizer;
pub mod unet;
pub mod unet_blocks;
pub mod vae;
pub mod weights;
