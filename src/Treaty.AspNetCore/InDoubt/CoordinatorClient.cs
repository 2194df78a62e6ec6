using System.Net.Http.Json;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using Treaty.Core.Contracts;
using Treaty.Core.Diagnostics;
using Treaty.Core.Serialization;

namespace Treaty.AspNetCore.InDoubt;

/// <summary>
/// Asks the coordinator about one transaction (<c>GET /api/v1/transactions/{gid}</c>) and reads
/// the answer as a <see cref="CoordinatorAnswer"/>. Every failure to get a usable answer —
/// connection refused, timeout, 5xx, a body that is not a transaction view — is
/// <see cref="CoordinatorAnswer.Unreachable"/>, never an exception.
/// </summary>
internal sealed class CoordinatorClient(Uri coordinator, TimeSpan requestTimeout, TimeProvider timeProvider, ILogger logger)
{
    private readonly Uri _base = coordinator.AbsoluteUri.EndsWith('/') ? coordinator : new Uri(coordinator.AbsoluteUri + "/");

    public async Task<CoordinatorAnswer> AskAsync(HttpClient http, string gid, CancellationToken cancellationToken)
    {
        // Already open when the resolver asks (then null); opened here for any other caller.
        using var scope = logger.BeginGidScope(gid);
        using var timeout = new CancellationTokenSource(requestTimeout, timeProvider);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(timeout.Token, cancellationToken);
        try
        {
            using var response = await http.GetAsync(new Uri(_base, "api/v1/transactions/" + Uri.EscapeDataString(gid)), HttpCompletionOption.ResponseContentRead, linked.Token);
            var status = (int)response.StatusCode;
            var treatyNotFound = status == 404 && await IsTreatyNotFoundAsync(response, linked.Token);
            if (InDoubtRules.FromStatusCode(status, treatyNotFound) is { } early)
            {
                if (early == CoordinatorAnswer.Unreachable)
                {
                    InDoubtLog.CoordinatorUnreachable(logger, gid, $"HTTP {status}");
                }

                return early;
            }

            var view = await response.Content.ReadFromJsonAsync(TreatyJsonContext.Default.TransactionView, linked.Token);
            if (view is null || view.Status is null || !string.Equals(view.Gid, gid, StringComparison.Ordinal))
            {
                InDoubtLog.CoordinatorUnreachable(logger, gid, "the answer is not this transaction's view");
                return CoordinatorAnswer.Unreachable;
            }

            return InDoubtRules.FromView(view.Status, view.Decision);
        }
        catch (OperationCanceledException) when (timeout.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
        {
            InDoubtLog.CoordinatorUnreachable(logger, gid, $"no answer within {requestTimeout}");
            return CoordinatorAnswer.Unreachable;
        }
        catch (HttpRequestException exception)
        {
            InDoubtLog.CoordinatorUnreachable(logger, gid, exception.Message);
            return CoordinatorAnswer.Unreachable;
        }
        catch (JsonException exception)
        {
            InDoubtLog.CoordinatorUnreachable(logger, gid, exception.Message);
            return CoordinatorAnswer.Unreachable;
        }
    }

    /// <summary>Whether a 404 is the coordinator's own "no such transaction" (problem+json of type not-found).</summary>
    private static async Task<bool> IsTreatyNotFoundAsync(HttpResponseMessage response, CancellationToken cancellationToken)
    {
        if (response.Content.Headers.ContentType?.MediaType != "application/problem+json")
        {
            return false;
        }

        try
        {
            using var problem = await JsonDocument.ParseAsync(await response.Content.ReadAsStreamAsync(cancellationToken), default, cancellationToken);
            return problem.RootElement.ValueKind == JsonValueKind.Object
                && problem.RootElement.TryGetProperty("type", out var type)
                && type.ValueKind == JsonValueKind.String
                && type.GetString() == ProblemTypes.NotFound;
        }
        catch (JsonException)
        {
            return false;
        }
    }
}
