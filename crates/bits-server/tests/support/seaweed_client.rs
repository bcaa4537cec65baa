//! A plain S3 client of a test SeaweedFS bucket (object_store, not bitsd), for tests that look
//! at what bitsd stored. Kept apart from `seaweed.rs`, which the benchmarks include without
//! object_store.

impl super::seaweed::SeaweedFs {
    pub fn client(&self) -> object_store::aws::AmazonS3 {
        let _ = rustls::crypto::ring::default_provider().install_default();
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_bucket_name(&self.bucket)
            .with_region("us-east-1")
            .with_access_key_id("any")
            .with_secret_access_key("any")
            .with_allow_http(true)
            .build()
            .expect("s3 client")
    }
}
