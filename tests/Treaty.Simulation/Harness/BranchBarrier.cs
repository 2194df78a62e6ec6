namespace Treaty.Simulation.Harness;

/// <summary>A participant's answer to one branch call: an HTTP status and a JSON body.</summary>
internal readonly record struct ParticipantReply(int Status, string Body)
{
    public static ParticipantReply Ok(string body) => new(200, body);

    public static ParticipantReply Declined(string why) => new(409, why);
}

/// <summary>
/// The in-simulation branch barrier: a table keyed by (gid, branch, op), written in the same local
/// transaction as the business effect (here: the same scheduler event). A duplicate returns the
/// first answer without re-applying; a compensation with no prior action is recorded and does
/// nothing (null compensation); an action arriving after its compensation does nothing (hanging
/// prevention). The participant kit of issue 4 (Treaty.AspNetCore) replaces this class.
/// </summary>
internal sealed class BranchBarrier(bool hangingPrevention)
{
    private readonly Dictionary<(string Gid, string Branch, string Op), Row> _rows = [];

    /// <summary>Runs a forward operation at most once. <paramref name="body"/> reports whether it applied anything.</summary>
    public ParticipantReply Action(string gid, string branch, string op, string compensateOp, Func<(ParticipantReply Reply, bool Applied)> body, out string note)
    {
        if (_rows.TryGetValue((gid, branch, op), out var row))
        {
            note = "duplicate: first answer replayed";
            return row.Reply;
        }

        if (hangingPrevention && _rows.ContainsKey((gid, branch, compensateOp)))
        {
            var skipped = ParticipantReply.Ok("""{"skipped":"compensated before the action arrived"}""");
            _rows[(gid, branch, op)] = new Row(skipped, false);
            note = "hanging action refused";
            return skipped;
        }

        // Declines are recorded too: a late duplicate must not succeed where the first call declined.
        var (reply, applied) = body();
        _rows[(gid, branch, op)] = new Row(reply, applied);
        note = applied ? "applied" : "declined";
        return reply;
    }

    /// <summary>Runs a compensation at most once, and only if its action applied something.</summary>
    public ParticipantReply Compensate(string gid, string branch, string op, string actionOp, Func<ParticipantReply> undo, out string note)
    {
        if (_rows.TryGetValue((gid, branch, op), out var row))
        {
            note = "duplicate: first answer replayed";
            return row.Reply;
        }

        ParticipantReply reply;
        if (!_rows.TryGetValue((gid, branch, actionOp), out var action))
        {
            reply = ParticipantReply.Ok("""{"null":"no action to compensate"}""");
            note = "null compensation";
        }
        else if (!action.Applied)
        {
            reply = ParticipantReply.Ok("""{"noop":"the action applied nothing"}""");
            note = "nothing to undo";
        }
        else
        {
            reply = undo();
            note = "compensated";
        }

        _rows[(gid, branch, op)] = new Row(reply, false);
        return reply;
    }

    private sealed record Row(ParticipantReply Reply, bool Applied);
}
