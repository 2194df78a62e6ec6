using System.CommandLine;
using Treaty.Server;

namespace Treaty.Cli;

/// <summary><c>treaty serve</c>'s security flags: keys, the participant allowlist and the limits (docs/security.md).</summary>
internal sealed class ServeSecurityFlags
{
    /// <summary>Client keys, comma separated, added to the <c>--api-key</c> flags.</summary>
    internal const string ApiKeysVariable = "TREATY_API_KEYS";

    /// <summary>Operator keys, comma separated, added to the <c>--operator-key</c> flags.</summary>
    internal const string OperatorKeysVariable = "TREATY_OPERATOR_KEYS";

    private readonly Option<string[]> _apiKeys = new("--api-key")
    {
        Description = $"A client key (submit and read), NAME:SECRET or SECRET, secret at least 16 characters; repeat for rotation; also {ApiKeysVariable} (comma separated, out of the process list)",
        Arity = ArgumentArity.ZeroOrMore,
    };

    private readonly Option<string[]> _operatorKeys = new("--operator-key")
    {
        Description = $"An operator key (also retry, abort, the dashboard); repeatable; also {OperatorKeysVariable}. Without any key the coordinator listens on loopback only",
        Arity = ArgumentArity.ZeroOrMore,
    };

    private readonly Option<string[]> _allowParticipants = new("--allow-participant")
    {
        Description = "A URL prefix the coordinator may call as a participant (scheme, host, port, path); repeatable; default: loopback only",
        Arity = ArgumentArity.ZeroOrMore,
    };

    /// <summary>Dead-letter sources, comma separated, added to the <c>--dead-letter-source</c> flags.</summary>
    internal const string DeadLetterSourcesVariable = "TREATY_DEAD_LETTER_SOURCES";

    private readonly Option<string[]> _deadLetterSources = new("--dead-letter-source")
    {
        Description = $"NAME=URL of a service whose dead letters the dashboard shows (it maps MapTreatyDeadLetters); repeatable; also {DeadLetterSourcesVariable} (comma separated). The URL must pass --allow-participant; needs --callback-secret",
        Arity = ArgumentArity.ZeroOrMore,
    };

    private readonly Option<int> _rateLimit = new("--rate-limit")
    {
        Description = "Requests per second per key (or per address without a key); 0 turns the limit off",
        DefaultValueFactory = _ => 0,
    };

    private readonly Option<int> _maxStoredBody = new("--max-stored-body")
    {
        Description = "Largest participant answer stored in full, in bytes; a larger result is replaced by a note, a larger error clipped",
        DefaultValueFactory = _ => TreatyServerDefaults.MaxBranchResultBytes,
    };

    public IEnumerable<Option> All => [_apiKeys, _operatorKeys, _allowParticipants, _deadLetterSources, _rateLimit, _maxStoredBody];

    /// <summary>Copies the flags (and the key variables) into <paramref name="options"/>.</summary>
    public void Apply(ParseResult parse, TreatyServerOptions options) =>
        Apply(parse, options, Environment.GetEnvironmentVariable(ApiKeysVariable), Environment.GetEnvironmentVariable(OperatorKeysVariable),
            Environment.GetEnvironmentVariable(DeadLetterSourcesVariable));

    internal void Apply(ParseResult parse, TreatyServerOptions options, string? apiKeysVariable, string? operatorKeysVariable, string? deadLetterSourcesVariable = null)
    {
        foreach (var key in (parse.GetValue(_apiKeys) ?? []).Concat(Split(apiKeysVariable)))
        {
            options.ApiKeys.Add(key);
        }

        foreach (var key in (parse.GetValue(_operatorKeys) ?? []).Concat(Split(operatorKeysVariable)))
        {
            options.OperatorKeys.Add(key);
        }

        foreach (var prefix in parse.GetValue(_allowParticipants) ?? [])
        {
            options.AllowedParticipants.Add(prefix);
        }

        foreach (var source in (parse.GetValue(_deadLetterSources) ?? []).Concat(Split(deadLetterSourcesVariable)))
        {
            options.DeadLetterSources.Add(source);
        }

        options.RateLimitPerSecond = parse.GetValue(_rateLimit);
        options.MaxBranchResultBytes = parse.GetValue(_maxStoredBody);
    }

    private static IEnumerable<string> Split(string? list) =>
        (list ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
}
