// No targets: the LTFU workflow only needs the follow-up task.
module.exports = [];
