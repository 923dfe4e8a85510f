//! A safetensors file from anywhere: the header parse and every tensor read must give a value
//! or a typed error naming the file, never a panic or a read outside the bytes.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz/model.safetensors");
    let weights = match ember::weights::Weights::from_bytes(path, data.to_vec()) {
        Ok(w) => w,
        // A header fault names the file; a missing embedding table names the model folder.
        Err(ember::Error::MissingTensor { dir, .. }) => {
            assert_eq!(dir, Path::new("fuzz"));
            return;
        }
        Err(e) => {
            assert!(e.to_string().contains("fuzz/model.safetensors"), "{e}");
            return;
        }
    };
    let tensors: Vec<(String, Vec<usize>)> = weights
        .tensors()
        .map(|(n, s)| (n.to_string(), s.to_vec()))
        .collect();
    for (name, shape) in tensors {
        match weights.read_f32(&name, &shape) {
            Ok(values) => assert_eq!(values.len(), shape.iter().product::<usize>()),
            Err(e) => assert!(e.to_string().contains(&name), "{e}"),
        }
        // A shape that disagrees is refused by name.
        let mut wrong = shape.clone();
        wrong.push(1);
        assert!(weights.read_f32(&name, &wrong).is_err());
    }
});
