using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Mvc;

namespace Shop.Infrastructure;

/// <summary>
/// Fault rules and call counters for tests and the demo. A rule fails the next N calls of a path
/// with a status before the handler runs (so nothing is applied), and/or delays the handler.
/// Counters say how often a path was called and how often a call changed data.
/// </summary>
internal sealed class FaultRegistry
{
    private readonly Lock _lock = new();
    private readonly Dictionary<string, FaultRuleView> _rules = new(StringComparer.OrdinalIgnoreCase);
    private readonly Dictionary<string, (long Calls, long Applied)> _counts = new(StringComparer.OrdinalIgnoreCase);

    public void Set(FaultRuleView rule)
    {
        lock (_lock)
        {
            _rules[rule.Path] = rule;
        }
    }

    public void ClearRules()
    {
        lock (_lock)
        {
            _rules.Clear();
        }
    }

    public void ClearCounts()
    {
        lock (_lock)
        {
            _counts.Clear();
        }
    }

    public IReadOnlyList<FaultRuleView> Rules()
    {
        lock (_lock)
        {
            return [.. _rules.Values.OrderBy(r => r.Path, StringComparer.Ordinal)];
        }
    }

    /// <summary>Counts a call and decides its fate: how long to delay it and whether to fail it (with which status).</summary>
    public (TimeSpan Delay, int? FailWith) OnCall(string path)
    {
        lock (_lock)
        {
            var (calls, applied) = _counts.GetValueOrDefault(path);
            _counts[path] = (calls + 1, applied);
            if (!_rules.TryGetValue(path, out var rule))
            {
                return (TimeSpan.Zero, null);
            }

            int? failWith = null;
            if (rule.FailTimes != 0)
            {
                failWith = rule.Status;
                if (rule.FailTimes > 0)
                {
                    rule = rule with { FailTimes = rule.FailTimes - 1 };
                }
            }

            if (rule.FailTimes == 0 && rule.DelayMs == 0)
            {
                _rules.Remove(path);
            }
            else
            {
                _rules[path] = rule;
            }

            return (TimeSpan.FromMilliseconds(rule.DelayMs), failWith);
        }
    }

    public void MarkApplied(string path)
    {
        lock (_lock)
        {
            var (calls, applied) = _counts.GetValueOrDefault(path);
            _counts[path] = (calls, applied + 1);
        }
    }

    public CallCountView Count(string path)
    {
        lock (_lock)
        {
            var (calls, applied) = _counts.GetValueOrDefault(path);
            return new CallCountView(path, calls, applied);
        }
    }

    public IReadOnlyList<CallCountView> Counts()
    {
        lock (_lock)
        {
            return [.. _counts.OrderBy(c => c.Key, StringComparer.Ordinal).Select(c => new CallCountView(c.Key, c.Value.Calls, c.Value.Applied))];
        }
    }
}

/// <summary>The <c>/_faults</c> endpoints and the middleware that applies the rules (only with <c>--faults</c>).</summary>
internal static class FaultEndpoints
{
    public const string Prefix = "/_faults";

    public static void UseFaults(this WebApplication app)
    {
        var registry = app.Services.GetRequiredService<FaultRegistry>();
        var timeProvider = app.Services.GetRequiredService<TimeProvider>();
        app.Use(async (context, next) =>
        {
            var path = context.Request.Path.Value ?? "/";
            if (path.StartsWith(Prefix, StringComparison.OrdinalIgnoreCase))
            {
                await next(context);
                return;
            }

            var (delay, failWith) = registry.OnCall(path);
            if (delay > TimeSpan.Zero)
            {
                // Not cancelled when the caller goes away: like a real slow service, the call still
                // completes and applies its effect (the demo kills the coordinator meanwhile).
                await Task.Delay(delay, timeProvider, CancellationToken.None);
            }

            if (failWith is { } status)
            {
                context.Response.StatusCode = status;
                var problems = context.RequestServices.GetRequiredService<IProblemDetailsService>();
                await problems.WriteAsync(new ProblemDetailsContext
                {
                    HttpContext = context,
                    ProblemDetails = new ProblemDetails
                    {
                        Status = status,
                        Type = Problems.InjectedFault,
                        Title = "Injected fault",
                        Detail = $"A fault rule failed this call of {path} before it did anything.",
                    },
                });
                return;
            }

            await next(context);
        });

        app.MapPost(Prefix, async (HttpContext context) =>
        {
            var (request, error) = await JsonBody.ReadAsync(context.Request, ShopJsonContext.Web.FaultRuleRequest, context.RequestAborted);
            if (request is null)
            {
                return error!;
            }

            var errors = new Dictionary<string, string[]>(StringComparer.Ordinal);
            if (string.IsNullOrEmpty(request.Path) || !request.Path.StartsWith('/'))
            {
                errors["path"] = ["A path starting with '/' is required, e.g. /saga/payment/refund."];
            }

            if (request.FailTimes is < -1)
            {
                errors["failTimes"] = ["failTimes is a count, or -1 for 'until cleared'."];
            }

            if (request.Status is { } s && s is < 400 or > 599)
            {
                errors["status"] = ["status must be an error status (400-599)."];
            }

            if (request.DelayMs is < 0 or > 600_000)
            {
                errors["delayMs"] = ["delayMs must be between 0 and 600000."];
            }

            if (errors.Count > 0)
            {
                return Problems.Validation(errors);
            }

            var rule = new FaultRuleView(request.Path!, request.FailTimes ?? 0, request.Status ?? StatusCodes.Status503ServiceUnavailable, request.DelayMs ?? 0);
            registry.Set(rule);
            return Results.Json(new FaultRulesView(registry.Rules()), ShopJsonContext.Web.FaultRulesView);
        });

        app.MapGet(Prefix, () => Results.Json(new FaultRulesView(registry.Rules()), ShopJsonContext.Web.FaultRulesView));

        // Clears the rules, not the counters: a test may lift a fault and then check how often the
        // path was called in all.
        app.MapDelete(Prefix, () =>
        {
            registry.ClearRules();
            return Results.NoContent();
        });

        app.MapGet(Prefix + "/calls", (string? path) => path is null
            ? Results.Json(new CallCountsView(registry.Counts()), ShopJsonContext.Web.CallCountsView)
            : Results.Json(registry.Count(path), ShopJsonContext.Web.CallCountView));

        app.MapDelete(Prefix + "/calls", () =>
        {
            registry.ClearCounts();
            return Results.NoContent();
        });
    }
}
