-- Worker transitions commit without waiting for the WAL flush when the session asks for
-- it (a crash of the server then at worst runs a job again); adds stay durable.
CREATE OR REPLACE FUNCTION @S._worker_commit() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('conveyor.worker_commit', true) = 'off' THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
END $$;

-- ------------------------------------------------------------------ protocol calls
