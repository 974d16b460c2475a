-- The triggers a flow declares (JSON: a list of trigger specs, as a function's
-- `triggers`): timers, bucket rules, bus rules and queue triggers that start executions.
-- They are the flow's, not a revision's: changing them changes no running execution.
ALTER TABLE flows ADD COLUMN triggers TEXT NOT NULL DEFAULT '[]';
