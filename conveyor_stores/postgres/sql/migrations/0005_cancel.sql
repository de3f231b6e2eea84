-- CANCEL REQUEST: the reason an active job is to be cancelled with (NULL: none). Read by
-- the primary key only (workers ask about the jobs they hold).
ALTER TABLE @S.jobs ADD COLUMN IF NOT EXISTS cancel_reason text;
