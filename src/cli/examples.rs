//! The examples each subcommand's `--help` ends with: real commands, on the
//! tiny model that ships in the repository and on real models by their
//! Hugging Face ids.

pub const INFO: &str = "\
Examples:
  # the tiny SD 1.5-structured model in the repository
  pnp info --model kernels-tests/fixtures/models/sd15-tiny
  # a model by its Hugging Face id, downloaded into the Hugging Face cache on first use
  pnp info --model stabilityai/stable-diffusion-2-1-base
  # a single-file checkpoint, with a diffusers folder for its tokenizer and configs
  pnp info --model v2-1_512-ema-pruned.safetensors --config stable-diffusion-2-1-base/";

pub const TRANSLATE: &str = "\
Examples:
  # the tiny model in the repository (random weights: the output is structured noise)
  pnp translate --model kernels-tests/fixtures/models/sd15-tiny \\
      --image kernels-tests/fixtures/pnp/square.png --prompt \"a photo of a cat\" \\
      --steps 10 --inversion-steps 10 --width 64 --out translated.png
  # a real model by its Hugging Face id, with the authors' defaults
  pnp translate --model stabilityai/stable-diffusion-2-1-base --image horse.jpg \\
      --prompt \"a photo of a robot horse\" --out horse.png
  # several prompts share one inversion and one feature store: cat-0.png, cat-1.png
  pnp translate --model runwayml/stable-diffusion-v1-5 --image cat.jpg \\
      --prompt \"a photo of a tiger\" --prompt \"a bronze statue of a cat\" --out cat.png";

pub const GENERATE: &str = "\
Examples:
  # the tiny model in the repository
  pnp generate --model kernels-tests/fixtures/models/sd15-tiny --prompt \"a house\" \\
      --width 64 --height 64 --steps 10 --out house.png
  # a guidance image from text, its features kept, then translated
  pnp generate --model runwayml/stable-diffusion-v1-5 --prompt \"a photo of a horse\" \\
      --seed 7 --out horse.png --save-features horse.safetensors
  pnp translate --model runwayml/stable-diffusion-v1-5 --image horse.png \\
      --load-inversion horse.safetensors --prompt \"a robot horse\" --out robot.png";

pub const BATCH: &str = "\
Examples:
  # the three-item PIE-Bench-format folder in the repository, tiny model
  pnp batch --model kernels-tests/fixtures/models/sd15-tiny \\
      --pie-bench kernels-tests/fixtures/piebench --out results/pnp-tiny \\
      --steps 10 --width 64 --height 64
  # PIE-Bench with SD 1.5, the benchmark's \"ddim+pnp\" variant, as part 3 of 8 machines
  pnp batch --model runwayml/stable-diffusion-v1-5 --pie-bench PIE-Bench \\
      --out results/ddim+pnp --source-latents reconstruction --shard 3/8
  # a manifest: one JSON object per line, several prompts per image
  pnp batch --model stabilityai/stable-diffusion-2-1-base --manifest edits.jsonl --out results/edits";

pub const EVAL: &str = "\
Examples:
  # the pixel metrics of a result folder on the fixture folder
  pnp eval --pie-bench kernels-tests/fixtures/piebench --results results/pnp-tiny \\
      --csv eval.csv --html eval.html
  # all eight metrics of two methods, the networks by Hugging Face id
  pnp eval --pie-bench PIE-Bench --results results/directinversion+pnp \\
      --results results/ddim+pnp --csv eval.csv --html eval.html \\
      --dino facebook/dino-vitb8 --clip openai/clip-vit-large-patch14 \\
      --lpips lpips-squeeze.safetensors";

pub const BENCH: &str = "\
Examples:
  pnp bench kernels --quick
  pnp bench pipeline --arch sd21-base
  pnp bench plan --arch sd15 --profile h100";
