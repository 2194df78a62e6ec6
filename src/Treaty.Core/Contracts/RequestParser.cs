using System.Buffers;
using System.Collections.Immutable;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Treaty.Core.Engine;
using Treaty.Core.Model;
using Treaty.Core.Serialization;

namespace Treaty.Core.Contracts;

/// <summary>The outcome of checking a submit request.</summary>
public sealed record ParsedRequest(TransactionSpec? Spec, string? Fingerprint, IReadOnlyList<ValidationError> Errors, bool UnsupportedProtocol)
{
    public bool IsValid => Spec is not null;
}

/// <summary>Turns a wire request into a validated <see cref="TransactionSpec"/>, naming every bad field.</summary>
public static class RequestParser
{
    private static readonly SearchValues<char> GidChars =
        SearchValues.Create("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:");

    /// <param name="request">The deserialized body.</param>
    /// <param name="machineFor">The registered protocol machines.</param>
    /// <param name="newGid">Makes a gid when the request has none.</param>
    public static ParsedRequest Parse(SubmitTransactionRequest request, Func<Protocol, IProtocolMachine?> machineFor, Func<string> newGid)
    {
        var errors = new List<ValidationError>();
        var gid = request.Gid;
        if (gid is null)
        {
            gid = newGid();
        }
        else if (!IsValidGid(gid))
        {
            errors.Add(new("gid", $"A gid is 1 to {TreatyDefaults.MaxGidLength} characters of letters, digits, '-', '_', '.' and ':'."));
        }

        IProtocolMachine? machine = null;
        var unsupported = false;
        if (string.IsNullOrEmpty(request.Protocol))
        {
            errors.Add(new("protocol", "The protocol is required: one of saga, tcc, 2pc, 3pc, msg."));
        }
        else if (!ProtocolNames.TryParse(request.Protocol, out var protocol))
        {
            unsupported = true;
            errors.Add(new("protocol", $"Unknown protocol '{Truncate(request.Protocol)}': use one of saga, tcc, 2pc, 3pc, msg."));
        }
        else if (protocol == Protocol.Choreography)
        {
            // Not a submit: a choreography has no branches to call; its services report its events.
            errors.Add(new("protocol", "A choreography is created by the first event its services report (POST /api/v1/choreography/events), not by a submit."));
            return new ParsedRequest(null, null, errors, false);
        }
        else if ((machine = machineFor(protocol)) is null)
        {
            unsupported = true;
            errors.Add(new("protocol", $"Protocol '{request.Protocol}' is not enabled on this coordinator."));
        }

        var payload = "null";
        if (request.Payload is { } element)
        {
            payload = JsonSerializer.Serialize(element, TreatyJsonContext.Default.JsonElement);
        }

        var retry = ParseRetry(request.Retry, "retry", errors);
        if (request.TimeoutMs is { } timeout && (timeout <= 0 || timeout > TreatyDefaults.MaxTimeoutMs))
        {
            errors.Add(new("timeoutMs", $"timeoutMs must be between 1 and {TreatyDefaults.MaxTimeoutMs}."));
        }

        var branches = ParseBranches(request.Branches, machine, errors);
        var urls = ParseTransactionUrls(request, machine, errors);
        if (errors.Count > 0 || machine is null)
        {
            return new ParsedRequest(null, null, errors, unsupported);
        }

        var spec = new TransactionSpec(gid, machine.Protocol, payload, branches, request.TimeoutMs, retry) { Urls = urls };
        errors.AddRange(machine.Validate(spec));
        if (errors.Count > 0)
        {
            return new ParsedRequest(null, null, errors, false);
        }

        return new ParsedRequest(spec, Fingerprint(spec), errors, false);
    }

    /// <summary>A hash of the whole definition: the same request always gives the same fingerprint.</summary>
    public static string Fingerprint(TransactionSpec spec)
    {
        var bytes = JsonSerializer.SerializeToUtf8Bytes(spec, TreatyJsonContext.Default.TransactionSpec);
        return Convert.ToHexStringLower(SHA256.HashData(bytes));
    }

    public static bool IsValidGid(string gid) =>
        gid.Length is > 0 and <= TreatyDefaults.MaxGidLength && !gid.AsSpan().ContainsAnyExcept(GidChars);

    private static ImmutableArray<BranchSpec> ParseBranches(List<BranchRequest?>? requests, IProtocolMachine? machine, List<ValidationError> errors)
    {
        if (requests is null || requests.Count == 0)
        {
            errors.Add(new("branches", "At least one branch is required."));
            return [];
        }

        if (requests.Count > TreatyDefaults.MaxBranches)
        {
            errors.Add(new("branches", $"At most {TreatyDefaults.MaxBranches} branches."));
            return [];
        }

        var names = new HashSet<string>(StringComparer.Ordinal);
        var result = ImmutableArray.CreateBuilder<BranchSpec>(requests.Count);
        string? previous = null;
        for (var i = 0; i < requests.Count; i++)
        {
            var field = $"branches[{i}]";
            if (requests[i] is not { } request)
            {
                errors.Add(new(field, "A branch must be an object."));
                continue;
            }

            var name = request.Name;
            if (string.IsNullOrWhiteSpace(name) || name.Length > TreatyDefaults.MaxNameLength || !IsValidGid(name) || name.Contains('/', StringComparison.Ordinal))
            {
                errors.Add(new($"{field}.name", $"A branch name is 1 to {TreatyDefaults.MaxNameLength} characters of letters, digits, '-', '_', '.' and ':'."));
                name = null;
            }
            else if (!names.Add(name))
            {
                errors.Add(new($"{field}.name", $"Branch name '{name}' is used twice."));
            }

            var urls = ImmutableSortedDictionary.CreateBuilder<string, string>(StringComparer.Ordinal);
            foreach (var (op, url) in request.OperationUrls())
            {
                if (url is null)
                {
                    continue;
                }

                if (machine is not null && !machine.Shape.BranchOperations.Contains(op))
                {
                    errors.Add(new($"{field}.{op}", $"A {machine.Protocol.ToWire()} branch has no '{op}' operation; it has {string.Join(", ", machine.Shape.BranchOperations)}."));
                }
                else if (!IsValidUrl(url))
                {
                    errors.Add(new($"{field}.{op}", "Must be an absolute http or https URL."));
                }
                else
                {
                    urls[op] = UrlPool.Intern(url);
                }
            }

            ImmutableArray<string> dependsOn;
            if (request.DependsOn is null)
            {
                dependsOn = previous is null || machine?.Shape.DependsOn != DependsOnDefault.PreviousBranch ? [] : [previous];
            }
            else if (machine is { Shape.AllowsDependsOn: false })
            {
                errors.Add(new($"{field}.dependsOn", $"A {machine.Protocol.ToWire()} transaction runs every branch at once; dependsOn does not apply."));
                dependsOn = [];
            }
            else
            {
                var deps = ImmutableArray.CreateBuilder<string>();
                foreach (var dependency in request.DependsOn)
                {
                    if (dependency is null || !names.Contains(dependency) && !requests.Any(r => r?.Name == dependency))
                    {
                        errors.Add(new($"{field}.dependsOn", $"Unknown branch '{Truncate(dependency ?? "null")}'."));
                    }
                    else if (dependency == name)
                    {
                        errors.Add(new($"{field}.dependsOn", "A branch cannot depend on itself."));
                    }
                    else if (!deps.Contains(dependency))
                    {
                        deps.Add(dependency);
                    }
                }

                dependsOn = deps.ToImmutable();
            }

            if (request.TimeoutMs is { } timeout && (timeout <= 0 || timeout > TreatyDefaults.MaxTimeoutMs))
            {
                errors.Add(new($"{field}.timeoutMs", $"timeoutMs must be between 1 and {TreatyDefaults.MaxTimeoutMs}."));
            }

            var retry = ParseRetry(request.Retry, $"{field}.retry", errors);
            result.Add(new BranchSpec(name ?? "", urls.ToImmutable(), dependsOn, request.Pivot ?? false, request.TimeoutMs, retry));
            previous = name;
        }

        if (errors.Count == 0)
        {
            var spec = new TransactionSpec("", Protocol.Saga, "null", result.ToImmutable(), null, null);
            if (Dag.From(spec).FindCycle() is { } cycle)
            {
                errors.Add(new($"branches[{cycle}].dependsOn", "The dependencies form a cycle."));
            }
        }

        return result.ToImmutable();
    }

    private static ImmutableSortedDictionary<string, string>? ParseTransactionUrls(SubmitTransactionRequest request, IProtocolMachine? machine, List<ValidationError> errors)
    {
        var urls = ImmutableSortedDictionary.CreateBuilder<string, string>(StringComparer.Ordinal);
        foreach (var (op, url) in request.OperationUrls())
        {
            if (url is null)
            {
                continue;
            }

            if (machine is not null && !machine.Shape.TransactionOperations.Contains(op))
            {
                errors.Add(new(op, $"A {machine.Protocol.ToWire()} transaction has no '{op}' operation."));
            }
            else if (!IsValidUrl(url))
            {
                errors.Add(new(op, "Must be an absolute http or https URL."));
            }
            else
            {
                urls[op] = UrlPool.Intern(url);
            }
        }

        return urls.Count == 0 ? null : urls.ToImmutable();
    }

    private static RetryPolicy? ParseRetry(RetryPolicyRequest? request, string field, List<ValidationError> errors)
    {
        if (request is null)
        {
            return null;
        }

        var policy = new RetryPolicy(
            request.MaxAttempts ?? TreatyDefaults.MaxAttempts,
            request.InitialDelayMs ?? TreatyDefaults.InitialDelayMs,
            request.MaxDelayMs ?? Math.Max(TreatyDefaults.MaxDelayMs, request.InitialDelayMs ?? 0));
        if (policy.MaxAttempts is < 1 or > TreatyDefaults.MaxRetryAttempts)
        {
            errors.Add(new($"{field}.maxAttempts", $"maxAttempts must be between 1 and {TreatyDefaults.MaxRetryAttempts}."));
        }

        if (policy.InitialDelayMs < 0 || policy.InitialDelayMs > TreatyDefaults.MaxTimeoutMs)
        {
            errors.Add(new($"{field}.initialDelayMs", $"initialDelayMs must be between 0 and {TreatyDefaults.MaxTimeoutMs}."));
        }

        if (policy.MaxDelayMs < policy.InitialDelayMs || policy.MaxDelayMs > TreatyDefaults.MaxTimeoutMs)
        {
            errors.Add(new($"{field}.maxDelayMs", $"maxDelayMs must be at least initialDelayMs and at most {TreatyDefaults.MaxTimeoutMs}."));
        }

        return policy;
    }

    private static bool IsValidUrl(string url) =>
        url.Length <= TreatyDefaults.MaxUrlLength
        && Uri.TryCreate(url, UriKind.Absolute, out var uri)
        && (uri.Scheme == Uri.UriSchemeHttp || uri.Scheme == Uri.UriSchemeHttps);

    private static string Truncate(string text) => text.Length <= 40 ? text : text[..40] + "…";
}
