namespace Treaty.Core.Model;

/// <summary>The transaction protocols Treaty coordinates.</summary>
public enum Protocol
{
    /// <summary>Orchestrated saga: actions with compensations.</summary>
    Saga,
    /// <summary>Try-Confirm/Cancel.</summary>
    Tcc,
    /// <summary>Two-phase commit (presumed abort).</summary>
    TwoPhaseCommit,
    /// <summary>Three-phase commit.</summary>
    ThreePhaseCommit,
    /// <summary>Two-phase message.</summary>
    Msg,
    /// <summary>Choreographed saga: no orchestrator; the services report their events and the
    /// coordinator only watches (it never calls a participant).</summary>
    Choreography,
}

/// <summary>Wire names of protocols and operations.</summary>
public static class ProtocolNames
{
    public const string Saga = "saga";
    public const string Tcc = "tcc";
    public const string TwoPhaseCommit = "2pc";
    public const string ThreePhaseCommit = "3pc";
    public const string Msg = "msg";
    public const string Choreography = "choreography";

    /// <summary>Saga forward operation; also the two-phase message's delivery to a branch.</summary>
    public const string Action = "action";
    /// <summary>Saga compensating operation.</summary>
    public const string Compensate = "compensate";
    /// <summary>TCC: reserve.</summary>
    public const string Try = "try";
    /// <summary>TCC: make the reservation permanent.</summary>
    public const string Confirm = "confirm";
    /// <summary>TCC: release the reservation.</summary>
    public const string Cancel = "cancel";
    /// <summary>2PC: vote (2xx = YES), holding what the branch needs to commit.</summary>
    public const string Prepare = "prepare";
    /// <summary>2PC: apply the prepared work.</summary>
    public const string Commit = "commit";
    /// <summary>2PC: drop the prepared work.</summary>
    public const string Rollback = "rollback";
    /// <summary>3PC: vote (2xx = YES).</summary>
    public const string CanCommit = "canCommit";
    /// <summary>3PC: every participant voted YES; acknowledge that the outcome will be commit.</summary>
    public const string PreCommit = "preCommit";
    /// <summary>3PC: commit.</summary>
    public const string DoCommit = "doCommit";
    /// <summary>3PC: abort.</summary>
    public const string Abort = "abort";
    /// <summary>Two-phase message, transaction-level: did the sender's local transaction commit?</summary>
    public const string QueryPrepared = "queryPrepared";

    public static string ToWire(this Protocol protocol) => protocol switch
    {
        Protocol.Saga => Saga,
        Protocol.Tcc => Tcc,
        Protocol.TwoPhaseCommit => TwoPhaseCommit,
        Protocol.ThreePhaseCommit => ThreePhaseCommit,
        Protocol.Msg => Msg,
        Protocol.Choreography => Choreography,
        _ => throw new ArgumentOutOfRangeException(nameof(protocol)),
    };

    public static bool TryParse(string? text, out Protocol protocol)
    {
        switch (text)
        {
            case Saga: protocol = Protocol.Saga; return true;
            case Tcc: protocol = Protocol.Tcc; return true;
            case TwoPhaseCommit: protocol = Protocol.TwoPhaseCommit; return true;
            case ThreePhaseCommit: protocol = Protocol.ThreePhaseCommit; return true;
            case Msg: protocol = Protocol.Msg; return true;
            case Choreography: protocol = Protocol.Choreography; return true;
            default: protocol = default; return false;
        }
    }
}
