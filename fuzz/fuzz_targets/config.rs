//! A config.json from anywhere: a validated config or an error naming config.json, and every
//! size the loader multiplies stays far from overflow.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match ember::config::ModelConfig::from_json(Path::new("fuzz/config.json"), data) {
        Ok(c) => {
            assert!(c.hidden_size > 0 && c.hidden_size % c.num_heads == 0);
            assert!(c.max_supported_length() > 0);
            assert!(c.defaults.max_length <= c.max_supported_length());
            let _ = c.parameter_count();
        }
        Err(e) => assert!(e.to_string().contains("config.json"), "{e}"),
    }
});
