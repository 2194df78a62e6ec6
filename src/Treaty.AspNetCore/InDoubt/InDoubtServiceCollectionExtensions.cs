using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using Treaty.AspNetCore.Barrier;

namespace Treaty.AspNetCore.InDoubt;

/// <summary>Registers the in-doubt resolver.</summary>
public static class InDoubtServiceCollectionExtensions
{
    /// <summary>
    /// Registers the in-doubt resolver: a background service that finds the 2PC/3PC branches of
    /// this participant that voted YES and have heard no outcome for
    /// <see cref="InDoubtResolverOptions.After"/>, asks the coordinator
    /// (<c>GET /api/v1/transactions/{gid}</c>) and acts on its answer:
    /// <list type="bullet">
    /// <item>a decision (commit or abort): the outcome operation runs here, through the barrier,
    /// with the handler of the endpoint that took the vote — the coordinator's own call, when it
    /// comes, is a replay;</item>
    /// <item>2PC never decides alone: it waits (asks again with backoff) while the coordinator is
    /// undecided or unreachable, and rolls back when the coordinator has no record of the
    /// transaction (presumed abort);</item>
    /// <item>3PC waits while a reachable coordinator is undecided; when the coordinator cannot be
    /// reached (or has no record) it applies the termination rule alone: commit after preCommit,
    /// abort before.</item>
    /// </list>
    /// Also registers the barrier (<see cref="BarrierServiceCollectionExtensions.AddTreatyBarrier"/>).
    /// The options are validated at start. The coordinator is asked through the named
    /// <see cref="System.Net.Http.HttpClient"/> <see cref="InDoubtResolverDefaults.HttpClientName"/>.
    /// </summary>
    public static IServiceCollection AddTreatyInDoubtResolver(this IServiceCollection services, Action<InDoubtResolverOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configure);
        services.AddTreatyBarrier();
        services.AddOptions<InDoubtResolverOptions>().Configure(configure).ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<InDoubtResolverOptions>, InDoubtResolverOptionsValidator>());
        services.AddHttpClient(InDoubtResolverDefaults.HttpClientName).ConfigureHttpClient((provider, http) =>
        {
            if (provider.GetRequiredService<IOptions<InDoubtResolverOptions>>().Value.ApiKey is { Length: > 0 } key)
            {
                http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", key);
            }
        });
        services.TryAddSingleton<InDoubtResolver>();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IHostedService, InDoubtResolver>(provider => provider.GetRequiredService<InDoubtResolver>()));
        return services;
    }
}
