-- Semantic search over the embedded TPC-H supplier comments (written by
-- `kiln embed` in scripts/demo): embed a few questions, find each one's three
-- nearest suppliers with knn_join, and write the matches to Parquet.
-- Run with: kiln sql --table suppliers=kiln-out/supplier_embedded.parquet -f examples/supplier_search.sql
CREATE TABLE questions AS
SELECT column1 AS question, embed(column1) AS embedding
FROM (VALUES
    ('suppliers that complain about late deliveries'),
    ('careful accounts and quick payments'),
    ('requests handled slyly by the warehouse'));

COPY (
    SELECT question, s_suppkey, s_name, s_comment, rank, score
    FROM knn_join('questions', 'embedding', 'suppliers', 'embedding', 3, 'cosine')
) TO 'kiln-out/supplier_matches.parquet' STORED AS PARQUET;

SELECT question, rank, s_suppkey, round(score, 4) AS score, s_comment
FROM 'kiln-out/supplier_matches.parquet'
ORDER BY question, rank;
