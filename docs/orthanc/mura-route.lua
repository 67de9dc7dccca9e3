-- Orthanc: forward the CR and DX series of each study to mura-node once the study is stable
-- (no new instance for StableAge seconds). The node's results (SR, SC) come back into the same
-- study; the study becomes stable again and its CR/DX series are forwarded again, which the node
-- acknowledges as identical re-sends without processing anything twice.
-- Narrow the rule further on BodyPartExamined if other CR/DX studies should not leave Orthanc.
function OnStableStudy(studyId, tags, metadata)
  local series = ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))
  for _, s in pairs(series) do
    local modality = s['MainDicomTags']['Modality']
    if modality == 'CR' or modality == 'DX' then
      RestApiPost('/modalities/mura/store',
                  DumpJson({ Resources = { s['ID'] }, Synchronous = false }, true))
    end
  end
end
