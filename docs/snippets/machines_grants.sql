-- may cancel, by INSERT only
GRANT INSERT ON trio_cancel_requests TO canceller;
-- may cancel with the function (which returns the request's id: SELECT on id)
GRANT INSERT, SELECT (id) ON trio_cancel_requests TO canceller;
-- runs a bus (workers, and controllers that wait for landings)
GRANT SELECT, INSERT, DELETE ON trio_cancel_requests TO worker;
