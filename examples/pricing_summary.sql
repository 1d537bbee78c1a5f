-- Kiln's main job, for now: TPC-H Q1 (pricing summary) over the lineitem table
-- from `kiln datagen`, written to Parquet and read back.
-- The embedding and vector-search work extends this job.

COPY (
    SELECT
        l_returnflag,
        l_linestatus,
        sum(l_quantity) AS sum_qty,
        sum(l_extendedprice) AS sum_base_price,
        sum(l_extendedprice * (1 - l_discount)) AS sum_disc_price,
        sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) AS sum_charge,
        avg(l_quantity) AS avg_qty,
        avg(l_extendedprice) AS avg_price,
        avg(l_discount) AS avg_disc,
        count(*) AS count_order
    FROM lineitem
    WHERE l_shipdate <= DATE '1998-12-01' - INTERVAL '90' DAY
    GROUP BY l_returnflag, l_linestatus
) TO 'kiln-out/pricing_summary/' STORED AS PARQUET;

SELECT l_returnflag, l_linestatus, sum_qty, sum_charge, count_order
FROM 'kiln-out/pricing_summary/'
ORDER BY l_returnflag, l_linestatus;
