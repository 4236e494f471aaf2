//! The one seeded generator of the project: splitmix64 (Steele, Lea and
//! Flood, "Fast splittable pseudorandom number generators", 2014), with
//! uniform and Box-Muller normal samples on top. Synthetic weights, the
//! benchmarks' inputs and `generate`'s starting noise all come from here, so
//! a seed means the same stream everywhere. It is not PyTorch's generator:
//! seeds do not carry over from diffusers.

/// A splitmix64 stream.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// A stream for one named thing (a weight's key, say): the FNV-1a hash
    /// of `key` mixed with `seed`, so each key gets its own numbers however
    /// many keys are asked for and in whatever order.
    pub fn for_key(key: &str, seed: u64) -> Self {
        let state = key.bytes().fold(0xcbf2_9ce4_8422_2325u64 ^ seed, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        });
        SplitMix64 { state }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1), 24 bits.
    pub fn signed_unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// `n` samples uniform in [-1, 1).
    pub fn signed_units(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.signed_unit()).collect()
    }

    /// `n` standard normal samples (Box-Muller, both outputs used).
    pub fn gaussian(&mut self, n: usize) -> Vec<f32> {
        let scale = (1u64 << 53) as f64;
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            // u1 in (0, 1]: never 0, so the log is finite.
            let u1 = ((self.next_u64() >> 11) as f64 + 1.0) / scale;
            let u2 = (self.next_u64() >> 11) as f64 / scale;
            let r = (-2.0 * u1.ln()).sqrt();
            let a = std::f64::consts::TAU * u2;
            out.push((r * a.cos()) as f32);
            out.push((r * a.sin()) as f32);
        }
        out.truncate(n);
        out
    }
}

/// `n` standard normal samples from `seed`.
pub fn gaussian(seed: u64, n: usize) -> Vec<f32> {
    SplitMix64::new(seed).gaussian(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_has_unit_moments() {
        let x = gaussian(7, 100_000);
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / x.len() as f64;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
        assert_ne!(gaussian(7, 4), gaussian(8, 4));
        assert_eq!(gaussian(7, 5)[..4], gaussian(7, 4)[..]);
    }

    #[test]
    fn keys_get_their_own_streams() {
        let a = SplitMix64::for_key("unet.conv_in.weight", 0).signed_units(8);
        let b = SplitMix64::for_key("unet.conv_in.bias", 0).signed_units(8);
        assert_ne!(a, b);
        assert!(a.iter().all(|v| (-1.0..1.0).contains(v)));
    }
}
