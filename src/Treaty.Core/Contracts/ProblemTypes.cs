namespace Treaty.Core.Contracts;

/// <summary>Stable problem+json <c>type</c> URIs.</summary>
public static class ProblemTypes
{
    private const string Base = "https://treaty.dev/problems/";

    public const string Validation = Base + "validation";
    public const string MalformedJson = Base + "malformed-json";
    public const string UnsupportedProtocol = Base + "unsupported-protocol";
    public const string GidConflict = Base + "gid-conflict";
    public const string NotFound = Base + "not-found";
    public const string InvalidState = Base + "invalid-state";
    public const string PayloadTooLarge = Base + "payload-too-large";
    public const string UnsupportedMediaType = Base + "unsupported-media-type";
    public const string Internal = Base + "internal";
    public const string Unauthorized = Base + "unauthorized";
    public const string Forbidden = Base + "forbidden";
    public const string ParticipantNotAllowed = Base + "participant-not-allowed";
    public const string RateLimited = Base + "rate-limited";
}
