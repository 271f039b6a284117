/*
 * kd-reranker: the "oversample" request and "truncate_hits" response search processors, for test
 * nodes only.
 *
 * OpenSearch's own versions live in the search-pipeline-common module, which full distributions
 * ship but the minimal integ-test distribution that scripts/opensearch.sh runs lacks, and which
 * is not published to Maven Central. This stand-in, written from the documented behaviour,
 * gives the test node the same two processor types so that the search pipeline of
 * `reranker opensearch-pipeline` is the one a real cluster runs:
 *
 *   oversample     {sample_factor >= 1, context_prefix?}: size *= sample_factor (rounded up);
 *                  the original size (default 10) is kept in the pipeline context.
 *   truncate_hits  {target_size?, context_prefix?}: keep the first target_size hits (default:
 *                  the size saved by oversample).
 *
 * scripts/opensearch.sh compiles it with javac against the distribution's own jars and installs
 * it; never install it next to search-pipeline-common (the processor names would clash).
 */
package kdreranker.window;

import java.util.Arrays;
import java.util.Map;

import org.opensearch.action.search.SearchRequest;
import org.opensearch.action.search.SearchResponse;
import org.opensearch.action.search.SearchResponseSections;
import org.opensearch.plugins.Plugin;
import org.opensearch.plugins.SearchPipelinePlugin;
import org.opensearch.search.SearchHit;
import org.opensearch.search.SearchHits;
import org.opensearch.search.builder.SearchSourceBuilder;
import org.opensearch.search.pipeline.AbstractProcessor;
import org.opensearch.search.pipeline.PipelineProcessingContext;
import org.opensearch.search.pipeline.Processor;
import org.opensearch.search.pipeline.SearchRequestProcessor;
import org.opensearch.search.pipeline.SearchResponseProcessor;
import org.opensearch.search.pipeline.StatefulSearchRequestProcessor;
import org.opensearch.search.pipeline.StatefulSearchResponseProcessor;
import org.opensearch.search.profile.SearchProfileShardResults;

public class WindowPlugin extends Plugin implements SearchPipelinePlugin {
    static final String ORIGINAL_SIZE = "original_size";
    static final int DEFAULT_SIZE = 10;

    static String key(Object prefix) {
        return prefix == null ? ORIGINAL_SIZE : prefix + "." + ORIGINAL_SIZE;
    }

    @Override
    public Map<String, Processor.Factory<SearchRequestProcessor>> getRequestProcessors(Parameters parameters) {
        return Map.of("oversample", (factories, tag, description, ignoreFailure, config, context) -> {
            Object factor = config.remove("sample_factor");
            if (!(factor instanceof Number) || ((Number) factor).doubleValue() < 1.0) {
                throw new IllegalArgumentException("[sample_factor] must be a number >= 1.0");
            }
            Object prefix = config.remove("context_prefix");
            return new Oversample(tag, description, ignoreFailure, ((Number) factor).doubleValue(), key(prefix));
        });
    }

    @Override
    public Map<String, Processor.Factory<SearchResponseProcessor>> getResponseProcessors(Parameters parameters) {
        return Map.of("truncate_hits", (factories, tag, description, ignoreFailure, config, context) -> {
            Object target = config.remove("target_size");
            if (target != null && (!(target instanceof Number) || ((Number) target).intValue() < 0)) {
                throw new IllegalArgumentException("[target_size] must be a non-negative integer");
            }
            Object prefix = config.remove("context_prefix");
            return new TruncateHits(tag, description, ignoreFailure, target == null ? -1 : ((Number) target).intValue(), key(prefix));
        });
    }

    static final class Oversample extends AbstractProcessor implements StatefulSearchRequestProcessor {
        private final double factor;
        private final String key;

        Oversample(String tag, String description, boolean ignoreFailure, double factor, String key) {
            super(tag, description, ignoreFailure);
            this.factor = factor;
            this.key = key;
        }

        @Override
        public String getType() {
            return "oversample";
        }

        @Override
        public SearchRequest processRequest(SearchRequest request, PipelineProcessingContext context) {
            if (request.source() == null) {
                request.source(new SearchSourceBuilder());
            }
            int size = request.source().size() < 0 ? DEFAULT_SIZE : request.source().size();
            context.setAttribute(key, size);
            request.source().size((int) Math.ceil(size * factor));
            return request;
        }
    }

    static final class TruncateHits extends AbstractProcessor implements StatefulSearchResponseProcessor {
        private final int target;
        private final String key;

        TruncateHits(String tag, String description, boolean ignoreFailure, int target, String key) {
            super(tag, description, ignoreFailure);
            this.target = target;
            this.key = key;
        }

        @Override
        public String getType() {
            return "truncate_hits";
        }

        @Override
        public SearchResponse processResponse(SearchRequest request, SearchResponse response, PipelineProcessingContext context) {
            int size = target;
            if (size < 0) {
                Object saved = context.getAttribute(key);
                if (!(saved instanceof Number)) {
                    throw new IllegalStateException("truncate_hits has no target_size and no size saved by oversample");
                }
                size = ((Number) saved).intValue();
            }
            SearchHit[] hits = response.getHits().getHits();
            if (hits.length <= size) {
                return response;
            }
            SearchHit[] kept = Arrays.copyOf(hits, size);
            float max = Float.NaN;
            for (SearchHit hit : kept) {
                max = Float.isNaN(max) ? hit.getScore() : Math.max(max, hit.getScore());
            }
            SearchHits old = response.getHits();
            SearchHits cut = new SearchHits(kept, old.getTotalHits(), max, old.getSortFields(), old.getCollapseField(), old.getCollapseValues());
            SearchResponseSections sections = new SearchResponseSections(
                cut,
                response.getAggregations(),
                response.getSuggest(),
                response.isTimedOut(),
                response.isTerminatedEarly(),
                new SearchProfileShardResults(response.getProfileResults()),
                response.getNumReducePhases(),
                response.getInternalResponse().getSearchExtBuilders()
            );
            return new SearchResponse(
                sections,
                response.getScrollId(),
                response.getTotalShards(),
                response.getSuccessfulShards(),
                response.getSkippedShards(),
                response.getTook().millis(),
                response.getPhaseTook(),
                response.getShardFailures(),
                response.getClusters(),
                response.pointInTimeId()
            );
        }
    }
}
