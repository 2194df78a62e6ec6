namespace Treaty.Bench.Peer;

/// <summary>A run that cannot give figures (the broker did not start, no slip completed): exit code 1 and the message.</summary>
internal sealed class PeerFailure : Exception
{
    public PeerFailure()
    {
    }

    public PeerFailure(string message)
        : base(message)
    {
    }

    public PeerFailure(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}
