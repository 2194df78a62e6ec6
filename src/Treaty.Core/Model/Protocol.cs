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
}

/// <summary>Wire names of protocols and operations.</summary>
public static class ProtocolNames
{
    public const string Saga = "saga";
    public const string Tcc = "tcc";
    public const string TwoPhaseCommit = "2pc";
    public const string ThreePhaseCommit = "3pc";
    public const string Msg = "msg";

    /// <summary>Saga forward operation.</summary>
    public const string Action = "action";
    /// <summary>Saga compensating operation.</summary>
    public const string Compensate = "compensate";

    public static string ToWire(this Protocol protocol) => protocol switch
    {
        Protocol.Saga => Saga,
        Protocol.Tcc => Tcc,
        Protocol.TwoPhaseCommit => TwoPhaseCommit,
        Protocol.ThreePhaseCommit => ThreePhaseCommit,
        Protocol.Msg => Msg,
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
            default: protocol = default; return false;
        }
    }
}
