//! Parquet on an S3-compatible server (moto, on loopback): reading, writing
//! partitioned output, explicit table options, and keeping credentials out
//! of everything printed.

use crate::common::*;

/// `kiln` with the server's credentials in its environment.
fn kiln_s3(server: &S3Server) -> std::process::Command {
    let mut cmd = kiln();
    for (k, v) in server.env() {
        cmd.env(k, v);
    }
    cmd
}

fn ok_s3(server: &S3Server, args: &[&str]) -> String {
    let r = run(kiln_s3(server).args(args));
    assert_eq!(r.code, 0, "kiln {args:?} failed: {}", r.stderr);
    r.stdout
}

#[test]
fn datagen_to_s3_then_query_it() {
    let Some(server) = s3() else { return };
    server.create_bucket("kiln-datagen");
    let out = ok_s3(
        server,
        &[
            "datagen",
            "tpch",
            "--scale",
            "0.01",
            "--output",
            "s3://kiln-datagen/tpch/sf0.01",
        ],
    );
    assert!(out.contains("lineitem"), "{out}");
    let csv = ok_s3(
        server,
        &[
            "sql",
            "--format",
            "csv",
            "--table",
            "lineitem=s3://kiln-datagen/tpch/sf0.01/lineitem/",
            "-c",
            "SELECT count(*) AS n FROM lineitem",
        ],
    );
    assert_eq!(csv, "n\n60175\n");
}

#[test]
fn copy_partitioned_to_s3_reads_back_identically() {
    let Some(server) = s3() else { return };
    server.create_bucket("kiln-copy");
    let mut args: Vec<String> = vec!["sql".into(), "--format".into(), "csv".into()];
    args.extend(tpch_tables(&["orders"]));
    let script = "COPY (SELECT * FROM orders) TO 's3://kiln-copy/orders/' \
                  STORED AS PARQUET PARTITIONED BY (o_orderstatus);\n\
                  CREATE EXTERNAL TABLE back STORED AS PARQUET LOCATION 's3://kiln-copy/orders/';\n\
                  SELECT count(*) AS n, count(DISTINCT o_orderstatus) AS statuses FROM back;\n\
                  SELECT count(*) AS missing FROM (\n\
                    SELECT o_orderkey, o_custkey, o_orderstatus, o_totalprice, o_orderdate, o_comment FROM orders\n\
                    EXCEPT ALL\n\
                    SELECT o_orderkey, o_custkey, CAST(o_orderstatus AS VARCHAR), o_totalprice, o_orderdate, o_comment FROM back);\n\
                  SELECT count(*) AS extra FROM (\n\
                    SELECT o_orderkey, o_custkey, CAST(o_orderstatus AS VARCHAR), o_totalprice, o_orderdate, o_comment FROM back\n\
                    EXCEPT ALL\n\
                    SELECT o_orderkey, o_custkey, o_orderstatus, o_totalprice, o_orderdate, o_comment FROM orders);";
    args.extend(["-c".to_string(), script.to_string()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok_s3(server, &argv);
    assert_eq!(
        out,
        "count\n15000\nn,statuses\n15000,3\nmissing\n0\nextra\n0\n"
    );
    // The partition directories are real objects listed through S3.
    let listed = ok_s3(
        server,
        &[
            "sql",
            "--format",
            "csv",
            "-c",
            "SELECT count(*) AS n FROM 's3://kiln-copy/orders/o_orderstatus=F/'",
        ],
    );
    let n: u64 = listed.lines().nth(1).unwrap().parse().unwrap();
    assert!(n > 0 && n < 15000, "{listed}");
}

#[test]
fn table_options_configure_the_store_and_stay_secret() {
    let Some(server) = s3() else { return };
    server.create_bucket("kiln-options");
    let dir = tempdir();
    let local = dir.path().join("p.parquet");
    write_people(&local);
    // No AWS_* variables: everything comes from OPTIONS.
    let options = format!(
        "OPTIONS ('aws.access_key_id' '{ACCESS_KEY}', 'aws.secret_access_key' '{SECRET_KEY}', \
         'aws.region' 'us-east-1', 'aws.endpoint' '{}', 'aws.allow_http' 'true')",
        server.endpoint
    );
    let script = format!(
        "CREATE EXTERNAL TABLE sink (id BIGINT, name VARCHAR, score DOUBLE) STORED AS PARQUET \
           LOCATION 's3://kiln-options/people/' {options};\n\
         INSERT INTO sink SELECT * FROM '{}';\n\
         SELECT name FROM sink WHERE score IS NULL;",
        s(&local)
    );
    let out = ok(&["sql", "--format", "csv", "-c", &script]);
    assert_eq!(out, "count\n4\nname\ngrace\n");

    // EXPLAIN shows the table, never the credentials.
    let script = format!(
        "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION 's3://kiln-options/people/' {options};\n\
         SELECT * FROM t WHERE id = 1"
    );
    let plan = ok(&["explain", "-c", &script]);
    assert!(
        plan.contains("DataSourceExec") && plan.contains("people/"),
        "{plan}"
    );
    assert!(
        !plan.contains(SECRET_KEY) && !plan.contains(ACCESS_KEY),
        "{plan}"
    );

    // An error about that store does not echo them either.
    let script = format!(
        "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION 's3://kiln-options/none/' {options};\n\
         SELECT * FROM 's3://kiln-options/none/x.parquet'"
    );
    let r = run(kiln().args(["sql", "-c", &script]));
    assert_one_line_error(&r, &[]);
    assert!(
        !r.stderr.contains(SECRET_KEY) && !r.stderr.contains(ACCESS_KEY),
        "{}",
        r.stderr
    );

    // Another secret, on a bucket that does not exist: the statement fails
    // (moto does not check signatures, so the missing bucket is the cause)
    // and the secret given in OPTIONS is not echoed.
    let wrong = options.replace(SECRET_KEY, "not-the-right-secret-0123456789");
    let script = format!(
        "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION 's3://no-such-bucket-kiln/x/' {wrong};"
    );
    let r = run(kiln().args(["sql", "-c", &script]));
    assert_one_line_error(&r, &["no-such-bucket-kiln"]);
    assert!(
        !r.stderr.contains("not-the-right-secret-0123456789"),
        "{}",
        r.stderr
    );
}

#[test]
fn missing_bucket_is_one_line() {
    let Some(server) = s3() else { return };
    let r = run(kiln_s3(server).args([
        "sql",
        "-c",
        "SELECT * FROM 's3://kiln-no-such-bucket/data/'",
    ]));
    assert_one_line_error(&r, &["kiln-no-such-bucket"]);
    // Missing: running again fails the same way.
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(!r.stderr.contains(SECRET_KEY), "{}", r.stderr);
}

#[test]
fn unreachable_endpoint_fails_fast() {
    // A port nobody listens on: connection refused, retried a bounded
    // number of times, then one line. No moto needed.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let r = run(kiln()
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .args(["sql", "-c", "SELECT * FROM 's3://bucket/data.parquet'"]));
    assert_one_line_error(&r, &[]);
    // Unreachable: an orchestrator may retry (75, EX_TEMPFAIL).
    assert_eq!(r.code, 75, "{}", r.stderr);
    assert!(!r.stderr.contains(SECRET_KEY), "{}", r.stderr);
    assert!(
        r.elapsed < std::time::Duration::from_secs(30),
        "took {:?}",
        r.elapsed
    );
}
