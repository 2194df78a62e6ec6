using Treaty.AspNetCore.Barrier;

namespace Treaty.Simulation.Harness;

/// <summary>A participant's answer to one branch call: an HTTP status and a JSON body.</summary>
internal readonly record struct ParticipantReply(int Status, string Body)
{
    public static ParticipantReply Ok(string body) => new(200, body);

    /// <summary>A definitive business refusal, as problem+json (the engine's classification reads its detail).</summary>
    public static ParticipantReply Declined(string why) =>
        new(409, $$"""{"type":"https://shop.example/problems/declined","title":"Declined","status":409,"detail":"{{why}}"}""");
}

/// <summary>
/// The branch barrier of a simulated participant: the rows of the kit's barrier table, kept in
/// memory per (gid, branch) and written in the same local transaction as the business effect (here:
/// the same scheduler event). What to do with a call is not decided here but by the participant
/// kit's own <see cref="BarrierRules"/> (Treaty.AspNetCore), the function the real participants'
/// SQL barrier calls: a duplicate replays the stored answer, a compensation whose forward op did not
/// apply is a null compensation (200, the handler does not run), a forward op arriving after its
/// compensation is refused with 409 <c>branch-already-compensated</c> (the handler does not run).
/// <para>
/// A duplicate is recognised by the <c>Idempotency-Key</c> the coordinator sent, as a participant
/// that deduplicates on the key does: a row answers a later call only when that call carries the
/// same key. The coordinator's key is <c>{gid}/{branch}/{op}</c>, so for a correct coordinator this
/// is the kit's (gid, branch, op); a coordinator whose key changed between attempts of one
/// operation would get the handler run again, a double effect the invariants see.
/// </para>
/// <paramref name="policy"/> can bend the decision, for the known-bad variants.
/// </summary>
internal sealed class SimBarrier(Func<BarrierDecision, BarrierDecision>? policy = null)
{
    /// <summary>What the kit answers (409, problem+json) to a forward op that arrives after its compensation.</summary>
    public const string AlreadyCompensatedType = BranchBarrier.AlreadyCompensatedType;

    private readonly Dictionary<(string Gid, string Branch), List<Row>> _rows = [];

    public int NullCompensations { get; private set; }

    public int SkippedHanging { get; private set; }

    public int Replayed { get; private set; }

    /// <summary>Outcome ops refused because the opposite outcome had taken effect.</summary>
    public int Conflicts { get; private set; }

    /// <summary>
    /// Runs <paramref name="op"/> (the op on the wire: action, compensate, try...) of (gid, branch),
    /// sent with idempotency key <paramref name="key"/>, through the barrier; <paramref name="handler"/>
    /// runs only when the rules say so, and must apply its writes only when it answers 2xx (a
    /// definitive 4xx applies nothing, as the kit's savepoint guarantees).
    /// </summary>
    public ParticipantReply Execute(string gid, string branch, string op, string key, Func<ParticipantReply> handler, out BarrierDecision decision)
    {
        if (!_rows.TryGetValue((gid, branch), out var rows))
        {
            rows = new List<Row>(2);
            _rows[(gid, branch)] = rows;
        }

        // The rules see a row as "this op" only when it was written under the same key: a row of the
        // same op under another key is, for a participant that deduplicates on the key, another call.
        var view = new List<BarrierRecord>(rows.Count);
        foreach (var row in rows)
        {
            view.Add(row.Key == key || row.Record.Op != op ? row.Record : row.Record with { Op = $"{row.Record.Op}[{row.Key}]" });
        }

        decision = BarrierRules.Decide(view, op);
        if (policy is not null)
        {
            decision = policy(decision);
        }

        ParticipantReply reply;
        switch (decision)
        {
            case BarrierDecision.ReplayStored:
                Replayed++;
                return rows.Find(r => r.Key == key)!.Reply;
            case BarrierDecision.NullCompensation:
                NullCompensations++;
                reply = ParticipantReply.Ok($$"""{"gid":"{{gid}}","branch":"{{branch}}","op":"{{op}}","outcome":"null-compensation","applied":false}""");
                break;
            case BarrierDecision.SkipHanging:
                SkippedHanging++;
                reply = new ParticipantReply(409, $$"""{"type":"{{AlreadyCompensatedType}}","title":"Branch already compensated","status":409}""");
                break;
            case BarrierDecision.Conflict:
                // The opposite outcome already took effect here (a 3PC participant that committed
                // alone, then hears abort): refused, nothing run, nothing recorded, as the kit does.
                Conflicts++;
                return new ParticipantReply(409, $$"""{"type":"{{TreatyBarrier.OutcomeConflictType}}","title":"Outcome conflict","status":409}""");
            default:
                reply = handler();
                break;
        }

        var outcome = BarrierRules.OutcomeOf(decision, reply.Status);
        if (!BarrierRules.Records(op, outcome))
        {
            return reply; // a refused compensation or final op: not recorded, the retry runs again
        }

        rows.Add(new Row(new BarrierRecord(op, outcome), key, reply));
        return reply;
    }

    /// <summary>The kit minus hanging prevention: a forward op after its compensation runs its handler.</summary>
    public static BarrierDecision WithoutHangingPrevention(BarrierDecision decision) =>
        decision == BarrierDecision.SkipHanging ? BarrierDecision.RunHandler : decision;

    private sealed record Row(BarrierRecord Record, string Key, ParticipantReply Reply);
}
